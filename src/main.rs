//! The `fl-lab` binary: parse flags, run one command, turn an error into a message and exit code 2.

use std::process::ExitCode;

fn main() -> ExitCode {
    fl_lab::runtime::tune_for_training();
    fl_lab::runtime::quiet_on_closed_stdout();
    match fl_lab::cli::try_main() {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::from(2)
        }
    }
}
