//! placeholder
#[derive(clap::Args, Debug)]
pub struct TestConverterArgs {}
pub fn run_test_converter(_args: &TestConverterArgs, _out: &mut dyn std::io::Write) -> anyhow::Result<()> { Ok(()) }
