//! The `sluice` command line: `run`, `replay`, `transform`, `validate`, `schema`, `verify`.
//!
//! Exit codes: 0 ok, 1 runtime failure, 2 bad configuration or usage.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            if err.downcast_ref::<sluice::config::ConfigError>().is_some() {
                ExitCode::from(2)
            } else {
                ExitCode::from(1)
            }
        }
    }
}

/// sluice: replay a CSV into Kafka, transform it with WebAssembly, load it into Snowflake exactly once.
#[derive(Parser, Debug)]
#[command(name = "sluice", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Subcommand, Debug)]
enum Command {
    /// Print the JSON Schema of pipeline.json.
    Schema,
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Schema => {
            println!("{}", serde_json::to_string_pretty(&sluice::config::json_schema())?);
            Ok(ExitCode::SUCCESS)
        }
    }
}
