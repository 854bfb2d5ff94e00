//! Running host programs. The one place that turns a failed command into an error that names
//! the command line and shows what it printed on stderr.

use std::ffi::OsStr;
use std::process::{Command, Output};

use crate::error::{Error, Result};

/// The command line as a person would type it, for error messages and `--keep` hints.
pub fn describe(cmd: &Command) -> String {
    let mut words = vec![shell_word(cmd.get_program())];
    words.extend(cmd.get_args().map(shell_word));
    words.join(" ")
}

fn shell_word(word: &OsStr) -> String {
    let word = word.to_string_lossy();
    let plain = !word.is_empty()
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./:=,+@%".contains(c));
    if plain { word.into_owned() } else { shell_quote(&word) }
}

/// Quotes `value` for a POSIX shell: the result is always one word, whatever it contains.
pub fn shell_quote(value: &str) -> String {
    format!("'{}'", value.replace('\'', r"'\''"))
}

/// Runs `cmd` to completion, capturing its output; a non-zero exit is an error carrying stderr.
pub fn run(cmd: &mut Command) -> Result<Output> {
    let output = cmd
        .output()
        .map_err(|e| Error::msg(format!("cannot start `{}`: {e}", describe(cmd))))?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        return Err(Error::msg(format!(
            "`{}` failed ({}):\n{}",
            describe(cmd),
            output.status,
            stderr.trim_end()
        )));
    }
    Ok(output)
}

/// Like [`run`], returning stdout as text.
pub fn stdout(cmd: &mut Command) -> Result<String> {
    let output = run(cmd)?;
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shell_quote_survives_single_quotes() {
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(shell_quote(""), "''");
    }

    #[test]
    fn describe_quotes_only_words_that_need_it() {
        let mut cmd = Command::new("qemu-system-x86_64");
        cmd.args(["-append", "console=ttyS0 quiet", "-m", "1024"]);
        assert_eq!(
            describe(&cmd),
            "qemu-system-x86_64 -append 'console=ttyS0 quiet' -m 1024"
        );
    }
}
