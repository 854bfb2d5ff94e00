//! The command line for daily use. Pools, allocations, token listing and console users go
//! through the REST API (so they are authorized and audited like any client, and the running
//! appliance sees them at once); `token create`, `user reset-password` and `backup` work on the
//! data directory directly, for the first login and for scripts on the appliance host.

use std::path::Path;

use edgelb_api::{
    Allocation, Page, Pool, PoolPatch, PoolSpec, Problem, Role, Token, TokenSpec, User, UserPatch, UserSpec,
};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::config::{AllocCommand, ClientArgs, PoolCommand, TokenCommand, UserCommand};
use crate::store::{Store, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("{0}")]
    Usage(String),
    #[error("{0}")]
    Store(#[from] StoreError),
    #[error("cannot reach the appliance at {url}: {source}")]
    Connect { url: String, source: reqwest::Error },
    #[error("the appliance answered {status}: {detail}")]
    Api { status: u16, detail: String },
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Dataplane(#[from] crate::reconcile::ReconcileError),
}

/// The store of an appliance's data directory, for the commands that work on it directly; never
/// creates one.
async fn open_existing(data_dir: &Path) -> Result<Store, CliError> {
    if !data_dir.join(crate::store::DB_FILE).exists() {
        return Err(CliError::Usage(format!(
            "no database in {}: run `edgelb serve --data-dir {}` once first, or point --data-dir at the appliance's",
            data_dir.display(),
            data_dir.display()
        )));
    }
    Ok(Store::open(data_dir).await?)
}

/// `edgelb token create`: a token straight into the data directory; returns its secret.
pub async fn token_create(
    data_dir: &Path,
    name: &str,
    role: Role,
    cluster: Option<String>,
) -> Result<String, CliError> {
    let store = open_existing(data_dir).await?;
    let created = store
        .create_token(
            "cli",
            TokenSpec {
                name: name.to_owned(),
                role,
                cluster,
            },
        )
        .await?;
    Ok(created.secret)
}

/// `edgelb dataplane flush`: removes edgelb's IPVS services (VIPs inside its pools, read from
/// the data directory), its VIP addresses on `interface` and its nftables table; returns how many
/// entries it removed.
pub async fn dataplane_flush(data_dir: &Path, interface: Option<String>) -> Result<usize, CliError> {
    if !data_dir.join(crate::store::DB_FILE).exists() {
        return Err(CliError::Usage(format!(
            "no database in {}: the pools there say what edgelb owns",
            data_dir.display()
        )));
    }
    let store = Store::open(data_dir).await?;
    let dataplane = crate::dataplane::LinuxDataplane::connect(crate::dataplane::LinuxOptions {
        interface,
        ..Default::default()
    })
    .await
    .map_err(crate::reconcile::ReconcileError::from)?;
    Ok(crate::reconcile::flush(&store, &dataplane).await?.len())
}

/// `edgelb backup FILE`.
pub async fn backup(data_dir: &Path, file: &Path) -> Result<(), CliError> {
    open_existing(data_dir).await?.backup(file).await?;
    Ok(())
}

/// `edgelb user reset-password NAME`: a new random password for a console user, straight into the
/// data directory (for a lost password: it works with the appliance stopped or running); ends the
/// user's sessions and returns the password.
pub async fn reset_password(data_dir: &Path, name: &str) -> Result<String, CliError> {
    let store = open_existing(data_dir).await?;
    match store.reset_password("cli", name).await {
        Err(StoreError::NotFound(_)) => {
            let users: Vec<String> = store.list_users().await?.into_iter().map(|u| u.name).collect();
            Err(CliError::Usage(match users.is_empty() {
                true => format!(
                    "there is no console user '{name}', nor any other: `edgelb token create --role admin` still gives API access"
                ),
                false => format!("there is no console user '{name}': the users are {}", users.join(", ")),
            }))
        }
        other => Ok(other?),
    }
}

/// Where the bearer token comes from: what the command line says explicitly wins over the
/// environment, so `--token-file` is honoured in a shell that exports EDGELB_TOKEN.
fn resolve_token(args: &ClientArgs) -> Result<String, CliError> {
    let env = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty());
    let read = |file: &Path| {
        std::fs::read_to_string(file)
            .map(|t| t.trim().to_owned())
            .map_err(|e| CliError::Usage(format!("token file {}: {e}", file.display())))
    };
    if let Some(t) = &args.token {
        return Ok(t.trim().to_owned());
    }
    if let Some(f) = &args.token_file {
        return read(f);
    }
    if let Some(t) = env("EDGELB_TOKEN") {
        return t
            .into_string()
            .map(|t| t.trim().to_owned())
            .map_err(|_| CliError::Usage("EDGELB_TOKEN is not UTF-8".into()));
    }
    if let Some(f) = env("EDGELB_TOKEN_FILE") {
        return read(Path::new(&f));
    }
    Err(CliError::Usage(
        "no token: set EDGELB_TOKEN, --token or --token-file (create one with `edgelb token create`)".into(),
    ))
}

/// A REST client for the CLI.
#[derive(Debug)]
pub struct Client {
    http: reqwest::Client,
    base: String,
    token: String,
    json: bool,
}

impl Client {
    pub fn new(args: &ClientArgs) -> Result<Client, CliError> {
        let token = resolve_token(args)?;
        let ca = match (&args.ca_cert, &args.data_dir) {
            (Some(ca), _) => Some(std::fs::read(ca)?),
            (None, dir) => {
                let dir = dir.clone().unwrap_or_else(|| crate::config::DEFAULT_DATA_DIR.into());
                std::fs::read(dir.join(crate::tls::SELF_SIGNED_CERT)).ok()
            }
        };
        let mut builder = reqwest::Client::builder().user_agent(concat!("edgelb-cli/", env!("CARGO_PKG_VERSION")));
        if let Some(pem) = ca {
            let cert =
                reqwest::Certificate::from_pem(&pem).map_err(|e| CliError::Usage(format!("CA certificate: {e}")))?;
            builder = builder.tls_certs_only([cert]);
        }
        let http = builder
            .build()
            .map_err(|e| CliError::Usage(format!("HTTP client: {e}")))?;
        Ok(Client {
            http,
            base: args.server.trim_end_matches('/').to_owned(),
            token,
            json: args.json,
        })
    }

    async fn send<T: DeserializeOwned>(&self, req: reqwest::RequestBuilder) -> Result<Option<T>, CliError> {
        let resp = req
            .bearer_auth(&self.token)
            .send()
            .await
            .map_err(|source| CliError::Connect {
                url: self.base.clone(),
                source,
            })?;
        let status = resp.status();
        let bytes = resp.bytes().await.map_err(|source| CliError::Connect {
            url: self.base.clone(),
            source,
        })?;
        if !status.is_success() {
            let detail = serde_json::from_slice::<Problem>(&bytes)
                .map(|p| p.detail)
                .unwrap_or_else(|_| String::from_utf8_lossy(&bytes).into_owned());
            return Err(CliError::Api {
                status: status.as_u16(),
                detail,
            });
        }
        if bytes.is_empty() {
            return Ok(None);
        }
        serde_json::from_slice(&bytes).map(Some).map_err(|e| CliError::Api {
            status: status.as_u16(),
            detail: format!("unexpected answer: {e}"),
        })
    }

    async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, CliError> {
        self.send(self.http.get(format!("{}{path}", self.base)))
            .await?
            .ok_or_else(|| CliError::Api {
                status: 200,
                detail: "empty answer".into(),
            })
    }

    /// `DELETE path`; an error answer is the error.
    async fn delete(&self, path: &str) -> Result<(), CliError> {
        self.send::<serde_json::Value>(self.http.delete(format!("{}{path}", self.base)))
            .await
            .map(drop)
    }

    /// Sends `req` and prints the object it answers: JSON with `--json`, else `rows` of it.
    async fn send_and_print<T: Serialize + DeserializeOwned>(
        &self,
        req: reqwest::RequestBuilder,
        rows: impl FnOnce(&T) -> String,
    ) -> Result<(), CliError> {
        if let Some(v) = self.send::<T>(req).await? {
            self.print(&v, || rows(&v));
        }
        Ok(())
    }

    fn print<T: Serialize>(&self, value: &T, table: impl FnOnce() -> String) {
        if self.json {
            println!("{}", serde_json::to_string_pretty(value).unwrap_or_default());
        } else {
            print!("{}", table());
        }
    }
}

/// Formats rows as aligned columns.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            widths[i] = widths[i].max(c.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut s = cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<w$}", w = widths[i]))
            .collect::<Vec<_>>()
            .join("  ");
        s.truncate(s.trim_end().len());
        s.push('\n');
        s
    };
    let mut out = line(header.to_vec());
    for r in rows {
        out.push_str(&line(r.iter().map(String::as_str).collect()));
    }
    out
}

fn pool_rows(pools: &[Pool]) -> String {
    let rows: Vec<Vec<String>> = pools
        .iter()
        .map(|p| {
            vec![
                p.spec.name.clone(),
                p.spec.ranges.join(","),
                p.usage.allocated.to_string(),
                p.usage.held.to_string(),
                p.usage.free.clone(),
                p.spec.priority.to_string(),
                if p.spec.auto_assign { "yes".into() } else { "no".into() },
                p.spec.scheduler.clone(),
            ]
        })
        .collect();
    table(
        &[
            "NAME",
            "RANGES",
            "ALLOCATED",
            "HELD",
            "FREE",
            "PRIORITY",
            "AUTO",
            "SCHEDULER",
        ],
        &rows,
    )
}

pub async fn pool(cmd: PoolCommand) -> Result<(), CliError> {
    match cmd {
        PoolCommand::List(args) => {
            let c = Client::new(&args)?;
            let pools: Vec<Pool> = c.get("/api/v1/pools").await?;
            c.print(&pools, || pool_rows(&pools));
        }
        PoolCommand::Show { name, client } => {
            let c = Client::new(&client)?;
            let p: Pool = c.get(&format!("/api/v1/pools/{name}")).await?;
            c.print(&p, || pool_rows(std::slice::from_ref(&p)));
        }
        PoolCommand::Create {
            name,
            ranges,
            no_auto_assign,
            avoid_buggy_ips,
            priority,
            clusters,
            namespaces,
            scheduler,
            hold_seconds,
            forwarding,
            capacity_warning_percent,
            capacity_critical_percent,
            client,
        } => {
            let c = Client::new(&client)?;
            let spec = PoolSpec {
                name,
                ranges,
                auto_assign: !no_auto_assign,
                avoid_buggy_ips,
                priority,
                clusters,
                namespaces,
                scheduler,
                hold_seconds,
                health: None,
                forwarding,
                capacity_warning_percent,
                capacity_critical_percent,
            };
            c.send_and_print(
                c.http.post(format!("{}/api/v1/pools", c.base)).json(&spec),
                |p: &Pool| pool_rows(std::slice::from_ref(p)),
            )
            .await?;
        }
        PoolCommand::Set {
            name,
            ranges,
            priority,
            scheduler,
            hold_seconds,
            forwarding,
            capacity_warning_percent,
            capacity_critical_percent,
            client,
        } => {
            let patch = PoolPatch {
                ranges: (!ranges.is_empty()).then_some(ranges),
                priority,
                scheduler,
                hold_seconds,
                forwarding: forwarding.map(|f| match f {
                    crate::config::PoolForwarding::Default => None,
                    crate::config::PoolForwarding::Method(m) => Some(m),
                }),
                capacity_warning_percent,
                capacity_critical_percent,
                ..PoolPatch::default()
            };
            if patch == PoolPatch::default() {
                return Err(CliError::Usage(
                    "nothing to change: give --range, --priority, --scheduler, --hold-seconds, --forwarding, \
                     --capacity-warning-percent or --capacity-critical-percent"
                        .into(),
                ));
            }
            let c = Client::new(&client)?;
            let req = c.http.patch(format!("{}/api/v1/pools/{name}", c.base)).json(&patch);
            c.send_and_print(req, |p: &Pool| pool_rows(std::slice::from_ref(p)))
                .await?;
        }
        PoolCommand::Delete { name, client } => {
            let c = Client::new(&client)?;
            c.delete(&format!("/api/v1/pools/{name}")).await?;
            println!("pool '{name}' deleted");
        }
    }
    Ok(())
}

pub async fn alloc(cmd: AllocCommand) -> Result<(), CliError> {
    let AllocCommand::List {
        pool,
        cluster,
        namespace,
        client,
    } = cmd;
    let c = Client::new(&client)?;
    let mut all: Vec<Allocation> = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut q: Vec<(&str, String)> = vec![("limit", "1000".into())];
        for (k, v) in [
            ("pool", &pool),
            ("cluster", &cluster),
            ("namespace", &namespace),
            ("cursor", &cursor),
        ] {
            if let Some(v) = v {
                q.push((k, v.clone()));
            }
        }
        let page: Page<Allocation> = c
            .send(c.http.get(format!("{}/api/v1/allocations", c.base)).query(&q))
            .await?
            .ok_or_else(|| CliError::Api {
                status: 200,
                detail: "empty answer".into(),
            })?;
        all.extend(page.items);
        match page.next_cursor {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    c.print(&all, || {
        let rows: Vec<Vec<String>> = all
            .iter()
            .map(|a| {
                vec![
                    a.ip.to_string(),
                    a.pool.clone(),
                    a.cluster.clone(),
                    format!("{:?}", a.state).to_lowercase(),
                    a.services
                        .iter()
                        .map(|s| format!("{}/{}", s.namespace, s.name))
                        .collect::<Vec<_>>()
                        .join(","),
                ]
            })
            .collect();
        table(&["IP", "POOL", "CLUSTER", "STATE", "SERVICES"], &rows)
    });
    Ok(())
}

pub async fn token(cmd: TokenCommand, data_dir_default: &Path) -> Result<(), CliError> {
    match cmd {
        TokenCommand::Create {
            data,
            name,
            role,
            cluster,
        } => {
            let dir = data.data_dir.unwrap_or_else(|| data_dir_default.to_path_buf());
            let secret = token_create(&dir, &name, role, cluster).await?;
            eprintln!("token '{name}' ({role}) created; the secret below is shown only once:");
            println!("{secret}");
        }
        TokenCommand::List(args) => {
            let c = Client::new(&args)?;
            let tokens: Vec<Token> = c.get("/api/v1/tokens").await?;
            c.print(&tokens, || {
                let rows: Vec<Vec<String>> = tokens
                    .iter()
                    .map(|t| {
                        vec![
                            t.id.clone(),
                            t.name.clone(),
                            t.role.to_string(),
                            t.cluster.clone().unwrap_or_default(),
                            t.created_by.clone(),
                        ]
                    })
                    .collect();
                table(&["ID", "NAME", "ROLE", "CLUSTER", "CREATED BY"], &rows)
            });
        }
        TokenCommand::Revoke { id, client } => {
            let c = Client::new(&client)?;
            c.delete(&format!("/api/v1/tokens/{id}")).await?;
            println!("token {id} revoked");
        }
    }
    Ok(())
}

/// A password from `--password-file` (`-`: standard input), without its line end.
fn read_password(file: &Path) -> Result<String, CliError> {
    let text = if file == Path::new("-") {
        std::io::read_to_string(std::io::stdin())
    } else {
        std::fs::read_to_string(file)
    }
    .map_err(|e| CliError::Usage(format!("password file {}: {e}", file.display())))?;
    Ok(text
        .strip_suffix('\n')
        .map(|t| t.strip_suffix('\r').unwrap_or(t))
        .unwrap_or(&text)
        .to_owned())
}

fn user_rows(users: &[User]) -> String {
    let rows: Vec<Vec<String>> = users
        .iter()
        .map(|u| {
            vec![
                u.name.clone(),
                u.role.to_string(),
                u.sessions.to_string(),
                u.created_at
                    .format(&time::format_description::well_known::Rfc3339)
                    .unwrap_or_default(),
            ]
        })
        .collect();
    table(&["NAME", "ROLE", "SESSIONS", "CREATED"], &rows)
}

pub async fn user(cmd: UserCommand, data_dir_default: &Path) -> Result<(), CliError> {
    match cmd {
        UserCommand::List(args) => {
            let c = Client::new(&args)?;
            let users: Vec<User> = c.get("/api/v1/users").await?;
            c.print(&users, || user_rows(&users));
        }
        UserCommand::Create {
            name,
            role,
            password_file,
            client,
        } => {
            let c = Client::new(&client)?;
            let made = password_file.is_none();
            let password = match &password_file {
                Some(f) => read_password(f)?,
                None => crate::store::new_password(),
            };
            let spec = UserSpec {
                name: name.clone(),
                role,
                password: password.clone(),
            };
            c.send::<User>(c.http.post(format!("{}/api/v1/users", c.base)).json(&spec))
                .await?;
            match made {
                true => {
                    eprintln!("console user '{name}' ({role}) created; the password below is shown only once:");
                    println!("{password}");
                }
                false => println!("console user '{name}' ({role}) created"),
            }
        }
        UserCommand::Set {
            name,
            role,
            password_file,
            client,
        } => {
            if role.is_none() && password_file.is_none() {
                return Err(CliError::Usage(
                    "nothing to change: give --role, --password-file or both".into(),
                ));
            }
            let c = Client::new(&client)?;
            let patch = UserPatch {
                role,
                password: password_file.as_deref().map(read_password).transpose()?,
            };
            let req = c.http.patch(format!("{}/api/v1/users/{name}", c.base)).json(&patch);
            c.send_and_print(req, |u: &User| user_rows(std::slice::from_ref(u)))
                .await?;
        }
        UserCommand::Delete { name, client } => {
            let c = Client::new(&client)?;
            c.delete(&format!("/api/v1/users/{name}")).await?;
            println!("console user '{name}' deleted; their sessions ended");
        }
        UserCommand::ResetPassword { name, data } => {
            let dir = data.data_dir.unwrap_or_else(|| data_dir_default.to_path_buf());
            let password = reset_password(&dir, &name).await?;
            eprintln!("console user '{name}' has a new password (shown only once) and no open sessions:");
            println!("{password}");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_aligns_columns_and_trims_line_ends() {
        let t = table(
            &["A", "LONGER"],
            &[vec!["xyz".into(), "1".into()], vec!["q".into(), "".into()]],
        );
        assert_eq!(t, "A    LONGER\nxyz  1\nq\n");
    }
}
