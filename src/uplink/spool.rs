//! placeholder: the durable uplink spool (spool issue).
