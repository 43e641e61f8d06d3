//! A throwaway PostgreSQL server: `initdb` into a temp dir, `postgres` on a
//! free loopback port (as the `postgres` user when the tests run as root:
//! PostgreSQL refuses to run as root), password authentication over TCP.
//! `scripts/test` installs the `postgresql` package; elsewhere a test
//! without it is skipped with a note unless `MODELGATE_REQUIRE_POSTGRES=1`.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const PASSWORD: &str = "pg-test-Secret-7f3a";

pub struct Postgres {
    child: Option<Child>,
    pub port: u16,
    bin: PathBuf,
    data: PathBuf,
    /// Unix-socket directory and log.
    run: PathBuf,
    owner: Option<(u32, u32)>,
    _dir: Option<tempfile::TempDir>,
}

/// The directory holding `initdb` and `postgres`: on `PATH`, or the newest
/// of Debian's `/usr/lib/postgresql/*/bin`.
fn bindir() -> Option<PathBuf> {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v = e.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((v, bin))
        })
        .collect();
    versions.sort();
    if let Some((_, bin)) = versions.pop() {
        return Some(bin);
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).find(|d| d.join("initdb").exists() && d.join("postgres").exists())
}

/// The `postgres` user's uid and gid, when the tests run as root.
fn owner() -> Option<(u32, u32)> {
    if nix_uid() != 0 {
        return None;
    }
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    let line = passwd.lines().find(|l| l.starts_with("postgres:"))?;
    let mut f = line.split(':').skip(2);
    Some((f.next()?.parse().ok()?, f.next()?.parse().ok()?))
}

fn nix_uid() -> u32 {
    // /proc/self/status: "Uid:\t<real>\t<effective>…"
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(str::to_string))
        })
        .and_then(|u| u.parse().ok())
        .unwrap_or(u32::MAX)
}

fn chown_tree(path: &Path, (uid, gid): (u32, u32)) {
    std::os::unix::fs::chown(path, Some(uid), Some(gid)).expect("chown");
    if path.is_dir() {
        for e in std::fs::read_dir(path).expect("read dir").flatten() {
            chown_tree(&e.path(), (uid, gid));
        }
    }
}

impl Postgres {
    /// `None` when PostgreSQL is not installed (and not required).
    pub fn start() -> Option<Postgres> {
        let Some(bin) = bindir() else {
            assert!(
                std::env::var("MODELGATE_REQUIRE_POSTGRES").as_deref() != Ok("1"),
                "PostgreSQL is required (MODELGATE_REQUIRE_POSTGRES=1) but initdb is not installed"
            );
            eprintln!("skipping: PostgreSQL is not installed (scripts/test installs it)");
            return None;
        };
        let owner = owner();
        if nix_uid() == 0 && owner.is_none() {
            panic!("running as root and there is no `postgres` user to run PostgreSQL as");
        }
        let dir = tempfile::tempdir().expect("temp dir");
        let data = dir.path().join("data");
        let run = dir.path().join("run");
        std::fs::create_dir(&run).unwrap();
        let pwfile = dir.path().join("pw");
        std::fs::write(&pwfile, PASSWORD).unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        if let Some(o) = owner {
            chown_tree(dir.path(), o);
        }
        let mut initdb = Command::new(bin.join("initdb"));
        initdb
            .arg("-D")
            .arg(&data)
            .args([
                "-U",
                "postgres",
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
                "--no-sync",
                "-E",
                "UTF8",
            ])
            .arg(format!("--pwfile={}", pwfile.display()))
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        if let Some((uid, gid)) = owner {
            initdb.uid(uid).gid(gid);
        }
        let out = initdb.output().expect("run initdb");
        assert!(
            out.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        for _ in 0..3 {
            let mut pg = Postgres {
                child: None,
                port: super::free_port(),
                bin: bin.clone(),
                data: data.clone(),
                run: run.clone(),
                owner,
                _dir: None,
            };
            if pg.launch() {
                pg._dir = Some(dir);
                return Some(pg);
            }
        }
        panic!("PostgreSQL did not become ready");
    }

    /// Start the server on the data directory; true once it accepts queries.
    fn launch(&mut self) -> bool {
        let log = std::fs::File::create(self.run.join("postgres.log")).unwrap();
        if let Some(o) = self.owner {
            chown_tree(&self.run, o);
        }
        let mut cmd = Command::new(self.bin.join("postgres"));
        cmd.arg("-D")
            .arg(&self.data)
            .args(["-p", &self.port.to_string(), "-c", "listen_addresses=127.0.0.1"])
            .args([
                "-c",
                "fsync=off",
                "-c",
                "synchronous_commit=off",
                "-c",
                "full_page_writes=off",
            ])
            .args(["-c", "max_connections=200", "-c", "shared_buffers=32MB"])
            .arg("-c")
            .arg(format!("unix_socket_directories={}", self.run.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        if let Some((uid, gid)) = self.owner {
            cmd.uid(uid).gid(gid);
        }
        self.child = Some(cmd.spawn().expect("spawn postgres"));
        self.wait_ready()
    }

    fn wait_ready(&mut self) -> bool {
        let deadline = Instant::now() + Duration::from_secs(30);
        for attempt in 0u64..600 {
            if let Some(Ok(Some(_))) = self.child.as_mut().map(|c| c.try_wait()) {
                return false;
            }
            if self.query_blocking("SELECT 1").is_ok() {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis((10 * (attempt + 1)).min(100)));
        }
        false
    }

    /// `postgres://postgres:PASSWORD@127.0.0.1:PORT/DB?sslmode=disable`.
    pub fn url(&self, db: &str) -> String {
        format!(
            "postgres://postgres:{PASSWORD}@127.0.0.1:{}/{db}?sslmode=disable",
            self.port
        )
    }

    /// The same URL with the password as `${PGPASSWORD}`, for a config file.
    pub fn url_with_env_password(&self, db: &str) -> String {
        format!(
            "postgres://postgres:${{PGPASSWORD}}@127.0.0.1:{}/{db}?sslmode=disable",
            self.port
        )
    }

    /// Create a database; the name is returned for [`Postgres::url`].
    pub fn create_db(&self, name: &str) -> String {
        self.query_blocking(&format!("CREATE DATABASE {name}"))
            .unwrap_or_else(|e| panic!("create database {name}: {e}"));
        name.to_string()
    }

    /// Run `sql` on the `postgres` database (or `DB:` prefix … use
    /// [`Postgres::query_in`]); the first column of every row, as text.
    pub fn query_blocking(&self, sql: &str) -> Result<Vec<Option<String>>, String> {
        self.query_in("postgres", sql)
    }

    pub fn query_in(&self, db: &str, sql: &str) -> Result<Vec<Option<String>>, String> {
        let url = self.url(db);
        let sql = sql.to_string();
        // A runtime of its own: callable from sync and async tests alike.
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let connect = tokio_postgres::connect(&url, tokio_postgres::NoTls);
                let (client, conn) = tokio::time::timeout(Duration::from_secs(5), connect)
                    .await
                    .map_err(|_| "connect timed out".to_string())?
                    .map_err(|e| e.to_string())?;
                tokio::spawn(conn);
                let msgs = tokio::time::timeout(Duration::from_secs(10), client.simple_query(&sql))
                    .await
                    .map_err(|_| "query timed out".to_string())?
                    .map_err(|e| e.to_string())?;
                Ok(msgs
                    .into_iter()
                    .filter_map(|m| match m {
                        tokio_postgres::SimpleQueryMessage::Row(r) => Some(r.get(0).map(str::to_string)),
                        _ => None,
                    })
                    .collect())
            })
        })
        .join()
        .unwrap()
    }

    /// One number from `sql` in `db`.
    pub fn count(&self, db: &str, sql: &str) -> i64 {
        let rows = self.query_in(db, sql).unwrap_or_else(|e| panic!("{sql}: {e}"));
        rows.first()
            .and_then(|v| v.as_deref())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{sql}: no number in {rows:?}"))
    }

    /// Fast shutdown (SIGINT), waiting for the server to exit.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            signal(child.id(), 2);
            let deadline = Instant::now() + Duration::from_secs(20);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Start again on the same port and data.
    pub fn restart(&mut self) {
        self.stop();
        for _ in 0..50 {
            if self.launch() {
                return;
            }
            self.stop();
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("PostgreSQL did not restart");
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.run.join("postgres.log")).unwrap_or_default()
    }
}

/// `kill -SIG PID`.
fn signal(pid: u32, sig: i32) {
    let _ = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

impl Drop for Postgres {
    fn drop(&mut self) {
        self.stop();
    }
}
