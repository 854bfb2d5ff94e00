//! `cargo xtask`: project tasks that are not part of any shipped program. Parses the task and
//! hands it to its module; exit status 0 = passed, 1 = a test failed, 2 = the task could not run.

mod cli;
mod error;
mod kernel_lab;
mod process;

use std::process::ExitCode;

use cli::Task;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args_os()
        .skip(1)
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let task = match cli::parse(&args) {
        Ok(task) => task,
        Err(e) => {
            eprintln!("xtask: {e}");
            return ExitCode::from(2);
        }
    };
    match task {
        Task::Help => {
            print!("{}", cli::USAGE);
            ExitCode::SUCCESS
        }
        Task::KernelLab(opts) => match kernel_lab::run(&opts) {
            Ok(true) => ExitCode::SUCCESS,
            Ok(false) => ExitCode::FAILURE,
            Err(e) => {
                eprintln!("kernel-lab: error: {e}");
                ExitCode::from(2)
            }
        },
    }
}
