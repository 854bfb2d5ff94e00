//! Running `nft` on the appliance's own table: apply a ruleset in one atomic transaction, patch
//! set elements, read the table back, delete it. Every command names the table; none lists or
//! flushes the whole ruleset.

use std::io;
use std::process::Stdio;

use tokio::io::AsyncWriteExt;
use tokio::process::Command;
use tracing::{debug, info};

use super::{
    DEFAULT_TABLE, FAMILY, NftError, Rule, Ruleset, TableState, expected_state, parse_listing, render, render_patch,
};

/// The appliance's nftables table, driven through the `nft` program.
#[derive(Debug, Clone)]
pub struct NftTable {
    program: String,
    table: String,
}

impl Default for NftTable {
    fn default() -> Self {
        Self {
            program: "nft".to_owned(),
            table: DEFAULT_TABLE.to_owned(),
        }
    }
}

impl NftTable {
    /// The table `inet NAME`. Names are letters, digits and `_` so they need no quoting.
    pub fn new(table: &str) -> Result<Self, NftError> {
        let plain = table.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if table.is_empty() || table.len() > 64 || !plain || table.starts_with(|c: char| c.is_ascii_digit()) {
            return Err(NftError::Invalid(format!(
                "nftables table name '{table}' must be 1 to 64 letters, digits or '_', not starting with a digit"
            )));
        }
        Ok(Self {
            table: table.to_owned(),
            ..Self::default()
        })
    }

    /// Uses `program` instead of `nft` from `PATH`.
    pub fn with_program(mut self, program: impl Into<String>) -> Self {
        self.program = program.into();
        self
    }

    /// The table's name (its family is always `inet`).
    pub fn name(&self) -> &str {
        &self.table
    }

    /// Replaces the table's whole content with `ruleset` in one transaction
    /// (`nft -f -` of [`render`]'s output).
    pub async fn apply(&self, ruleset: &Ruleset) -> Result<(), NftError> {
        let text = render(&self.table, ruleset);
        self.run(&["-f", "-"], Some(&text)).await?;
        info!(
            table = %self.table,
            forwards = ruleset.forwards.len(),
            bytes = text.len(),
            "nftables table applied"
        );
        Ok(())
    }

    /// Deletes and adds set elements in one transaction ([`render_patch`]).
    pub async fn patch(&self, add: &[Rule], delete: &[Rule]) -> Result<(), NftError> {
        if add.is_empty() && delete.is_empty() {
            return Ok(());
        }
        let text = render_patch(&self.table, add, delete);
        self.run(&["-f", "-"], Some(&text)).await?;
        debug!(table = %self.table, added = add.len(), deleted = delete.len(), "nftables elements changed");
        Ok(())
    }

    /// Asks the kernel whether `ruleset` would apply, without changing anything (`nft -c -f -`).
    pub async fn check(&self, ruleset: &Ruleset) -> Result<(), NftError> {
        self.run(&["-c", "-f", "-"], Some(&render(&self.table, ruleset)))
            .await
            .map(drop)
    }

    /// What the table holds now (`nft -j list table inet NAME`); `None` if it does not exist.
    pub async fn observe(&self) -> Result<Option<TableState>, NftError> {
        let args = ["-j", "list", "table", FAMILY, &self.table];
        match self.run(&args, None).await {
            Ok(json) => parse_listing(&json).map(Some).map_err(|reason| NftError::Parse {
                command: self.describe(&args),
                reason,
            }),
            Err(NftError::Failed { stderr, .. }) if stderr.contains("No such file or directory") => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Whether the table holds exactly what `ruleset` renders to.
    pub async fn in_sync(&self, ruleset: &Ruleset) -> Result<bool, NftError> {
        Ok(self.observe().await?.as_ref() == Some(&expected_state(ruleset)))
    }

    /// Deletes the table if it exists (`nft delete table inet NAME`), in one transaction that
    /// cannot fail on a missing table. Nothing else in the ruleset is touched.
    pub async fn flush(&self) -> Result<(), NftError> {
        let text = format!("table {FAMILY} {t} {{}}\ndelete table {FAMILY} {t}\n", t = self.table);
        self.run(&["-f", "-"], Some(&text)).await?;
        info!(table = %self.table, "nftables table deleted");
        Ok(())
    }

    fn describe(&self, args: &[&str]) -> String {
        let mut words = vec![self.program.as_str()];
        words.extend_from_slice(args);
        words.join(" ")
    }

    async fn run(&self, args: &[&str], stdin: Option<&str>) -> Result<String, NftError> {
        let command = self.describe(args);
        debug!(command = %command, "running nft");
        let mut child = Command::new(&self.program)
            .args(args)
            .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|source| match source.kind() {
                io::ErrorKind::NotFound => NftError::NotInstalled,
                _ => NftError::Spawn {
                    command: command.clone(),
                    source,
                },
            })?;
        // Feed stdin while collecting the output, so a large table cannot deadlock on full pipes;
        // if nft stops reading early, its exit status and stderr say why, not the broken pipe.
        let pipe = child.stdin.take();
        let feed = async move {
            if let (Some(text), Some(mut pipe)) = (stdin, pipe) {
                // Dropping the pipe at the end of this block closes it: nft reads to end of file.
                pipe.write_all(text.as_bytes()).await
            } else {
                Ok(())
            }
        };
        let (fed, output) = tokio::join!(feed, child.wait_with_output());
        let output = output.map_err(|source| NftError::Spawn {
            command: command.clone(),
            source,
        })?;
        if let Err(source) = fed
            && output.status.success()
        {
            return Err(NftError::Spawn { command, source });
        }
        if !output.status.success() {
            return Err(NftError::Failed {
                command,
                status: output.status.to_string(),
                stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
            });
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }
}
