//! placeholder: the gRPC client session to ThingsBoard (Foundation issue).
