//! A real headless Chromium for console tests and screenshots: starts Debian's `chromedriver`
//! as a child process on a free port and drives it with fantoccini. A missing `chromium` or
//! `chromedriver` is a failure, never a skip (`scripts/test.sh` installs both).

#![allow(dead_code)]

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use fantoccini::wd::Capabilities;
use fantoccini::{Client, ClientBuilder, Locator};

pub struct Browser {
    pub client: Client,
    driver: Child,
    _profile: tempfile::TempDir,
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
    l.local_addr().expect("addr").port()
}

/// The Chromium binary: Debian's `/usr/bin/chromium` is a shell wrapper around this one.
fn chromium_binary() -> String {
    let real = "/usr/lib/chromium/chromium";
    if std::path::Path::new(real).exists() {
        real.to_owned()
    } else {
        "chromium".to_owned()
    }
}

impl Browser {
    /// Starts chromedriver and a headless Chromium with a window of `width` x `height`.
    pub async fn start(width: u32, height: u32) -> Browser {
        let port = free_port();
        let driver = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver must be installed: apt-get install -y chromium chromium-driver");
        let profile = tempfile::tempdir().expect("profile dir");
        let args = vec![
            "--headless".to_owned(),
            "--no-sandbox".to_owned(),
            "--disable-gpu".to_owned(),
            "--disable-quic".to_owned(),
            "--no-first-run".to_owned(),
            "--disable-background-networking".to_owned(),
            "--disable-component-update".to_owned(),
            "--disable-sync".to_owned(),
            "--disable-dev-shm-usage".to_owned(),
            "--hide-scrollbars".to_owned(),
            format!("--window-size={width},{height}"),
            format!("--user-data-dir={}", profile.path().display()),
        ];
        let mut caps = Capabilities::new();
        caps.insert("browserName".into(), serde_json::json!("chrome"));
        // The appliance's certificate is self-signed: the browser (only) accepts it.
        caps.insert("acceptInsecureCerts".into(), serde_json::json!(true));
        caps.insert(
            "goog:chromeOptions".into(),
            serde_json::json!({ "binary": chromium_binary(), "args": args }),
        );
        let url = format!("http://127.0.0.1:{port}");
        let mut last = None;
        let mut browser = None;
        let mut driver = driver;
        for _ in 0..100 {
            if let Ok(Some(status)) = driver.try_wait() {
                panic!("chromedriver exited at start: {status}");
            }
            let connector = hyper_util::client::legacy::connect::HttpConnector::new();
            match ClientBuilder::new(connector)
                .capabilities(caps.clone())
                .connect(&url)
                .await
            {
                Ok(c) => {
                    browser = Some(c);
                    break;
                }
                Err(e) => {
                    last = Some(e.to_string());
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
        let Some(client) = browser else {
            stop_driver(&mut driver);
            panic!("no browser session from chromedriver (is chromium installed?): {last:?}");
        };
        Browser {
            client,
            driver,
            _profile: profile,
        }
    }

    pub async fn goto(&self, url: &str) {
        self.client
            .goto(url)
            .await
            .unwrap_or_else(|e| panic!("open {url}: {e}"));
    }

    pub async fn find(&self, css: &str) -> fantoccini::elements::Element {
        match self
            .client
            .wait()
            .at_most(Duration::from_secs(10))
            .for_element(Locator::Css(css))
            .await
        {
            Ok(e) => e,
            Err(e) => {
                let page = self.client.source().await.unwrap_or_default();
                panic!("element {css} should be on {}: {e}\n{page}", self.path().await)
            }
        }
    }

    /// Whether an element matching `css` is on the page now.
    pub async fn has(&self, css: &str) -> bool {
        !self
            .client
            .find_all(Locator::Css(css))
            .await
            .expect("find_all")
            .is_empty()
    }

    /// The text of every element matching `css`, in page order.
    pub async fn texts(&self, css: &str) -> Vec<String> {
        let mut out = Vec::new();
        for e in self.client.find_all(Locator::Css(css)).await.expect("find_all") {
            out.push(e.text().await.expect("text"));
        }
        out
    }

    pub async fn text(&self, css: &str) -> String {
        self.find(css).await.text().await.expect("text")
    }

    pub async fn fill(&self, css: &str, value: &str) {
        let e = self.find(css).await;
        e.clear().await.expect("clear");
        e.send_keys(value).await.expect("type");
    }

    /// Clicks something that loads a new page (a link, a submit button) and waits until the
    /// new page has loaded, so that the next lookup cannot find an element of the old one.
    pub async fn click(&self, css: &str) {
        let e = self.find(css).await;
        self.client
            .execute("window.__elbOldPage = true;", vec![])
            .await
            .expect("mark page");
        e.click().await.expect("click");
        for _ in 0..200 {
            let loaded = self
                .client
                .execute(
                    "return window.__elbOldPage === undefined && document.readyState === 'complete';",
                    vec![],
                )
                .await;
            if matches!(loaded, Ok(serde_json::Value::Bool(true))) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("clicking {css} on {} loaded no new page", self.path().await);
    }

    /// Clicks something that changes the page in place (a `<details>` summary).
    pub async fn click_in_place(&self, css: &str) {
        self.find(css).await.click().await.expect("click");
    }

    pub async fn value(&self, css: &str) -> String {
        self.find(css)
            .await
            .prop("value")
            .await
            .expect("value")
            .unwrap_or_default()
    }

    pub async fn path(&self) -> String {
        match self.client.current_url().await {
            Ok(u) => match u.query() {
                Some(q) => format!("{}?{q}", u.path()),
                None => u.path().to_owned(),
            },
            Err(e) => format!("<no url: {e}>"),
        }
    }

    pub async fn body(&self) -> String {
        self.text("body").await
    }

    /// Signs in through the login form and waits for the dashboard.
    pub async fn login(&self, base: &str, user: &str, password: &str) {
        self.goto(&format!("{base}/login")).await;
        self.fill("#user", user).await;
        self.fill("#password", password).await;
        self.click("#sign-in").await;
        self.find("#logout").await;
    }

    /// Posts a form from the page's own origin with `fetch` (what a forged or scripted request
    /// would do) and returns the status.
    pub async fn post_form(&self, path: &str, fields: serde_json::Value) -> u64 {
        let script = "const [path, fields, done] = arguments; \
             fetch(path, {method: 'POST', credentials: 'same-origin', redirect: 'manual', \
               headers: {'Content-Type': 'application/x-www-form-urlencoded'}, \
               body: new URLSearchParams(fields).toString()}) \
             .then(r => done(r.status), e => done(-1));";
        let v = self
            .client
            .execute_async(script, vec![serde_json::json!(path), fields])
            .await
            .expect("script runs");
        v.as_u64().unwrap_or_else(|| panic!("fetch failed: {v}"))
    }

    pub async fn close(mut self) {
        let client = self.client.clone();
        let _ = client.close().await;
        stop_driver(&mut self.driver);
    }
}

/// Stops chromedriver. After a clean `close` the browser is gone already; after a panic
/// mid-test Chromium may outlive it until the machine's next cleanup.
fn stop_driver(driver: &mut Child) {
    let _ = driver.kill();
    let _ = driver.wait();
}

impl Drop for Browser {
    fn drop(&mut self) {
        stop_driver(&mut self.driver);
    }
}
