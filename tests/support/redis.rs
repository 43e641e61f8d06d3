//! Throwaway `redis-server`s on free loopback ports, for the shared-state
//! tests: a plain one, a TLS-only one, and a small Redis Cluster.
//! `scripts/test` installs the server when it is missing; elsewhere a test
//! without it is skipped with a note unless `MODELGATE_REQUIRE_REDIS=1`.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a server (or a cluster) may take to come up.
const READY_TIMEOUT: Duration = Duration::from_secs(10);
const CLUSTER_TIMEOUT: Duration = Duration::from_secs(30);
const SLOTS: u16 = 16384;

pub struct RedisServer {
    child: Child,
    /// The port clients use: the plain port, or the TLS port of
    /// [`RedisServer::start_tls`].
    pub port: u16,
    /// The cluster bus port of [`RedisServer::start_cluster_node`].
    pub bus_port: Option<u16>,
    dir: tempfile::TempDir,
}

/// Whether `redis-server` is installed; when it is not, a note (or a panic
/// under `MODELGATE_REQUIRE_REDIS=1`).
pub fn installed() -> bool {
    let found = Command::new("redis-server")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        assert!(
            std::env::var("MODELGATE_REQUIRE_REDIS").as_deref() != Ok("1"),
            "redis-server is required (MODELGATE_REQUIRE_REDIS=1) but not installed"
        );
        eprintln!("skipping: redis-server is not installed (scripts/test installs it)");
    }
    found
}

impl RedisServer {
    /// A plain server; `None` when `redis-server` is not installed (and not
    /// required).
    pub fn start() -> Option<RedisServer> {
        if !installed() {
            return None;
        }
        Some(RedisServer::spawn(
            |port| (vec!["--port".into(), port.to_string()], None),
            |s| s.pings(),
        ))
    }

    /// A server that speaks TLS only (`--port 0`), with this certificate,
    /// key and CA; ready once a TLS `PING` to `localhost` that trusts
    /// `ca_pem` answers.
    pub fn start_tls(cert: &Path, key: &Path, ca: &Path, ca_pem: &[u8]) -> Option<RedisServer> {
        if !installed() {
            return None;
        }
        let ca_pem = ca_pem.to_vec();
        Some(RedisServer::spawn(
            |port| {
                let mut args: Vec<String> = [
                    "--port",
                    "0",
                    "--tls-port",
                    &port.to_string(),
                    "--tls-auth-clients",
                    "no",
                ]
                .map(String::from)
                .to_vec();
                for (flag, path) in [
                    ("--tls-cert-file", cert),
                    ("--tls-key-file", key),
                    ("--tls-ca-cert-file", ca),
                ] {
                    args.push(flag.into());
                    args.push(path.display().to_string());
                }
                (args, None)
            },
            move |s| {
                let certs = redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(ca_pem.clone()),
                };
                redis::Client::build_with_tls(format!("rediss://localhost:{}/0", s.port), certs)
                    .and_then(|c| c.get_connection_with_timeout(Duration::from_secs(1)))
                    .and_then(|mut c| redis::cmd("PING").query::<String>(&mut c))
                    .is_ok()
            },
        ))
    }

    /// A cluster-enabled server with no slots yet (see [`RedisCluster`]).
    pub fn start_cluster_node() -> Option<RedisServer> {
        if !installed() {
            return None;
        }
        Some(RedisServer::spawn(
            |port| {
                let bus = super::free_port();
                let args = [
                    "--port",
                    &port.to_string(),
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                    "--cluster-port",
                    &bus.to_string(),
                    "--cluster-node-timeout",
                    "5000",
                ]
                .map(String::from)
                .to_vec();
                (args, Some(bus))
            },
            |s| s.pings(),
        ))
    }

    /// Spawn with the arguments `args(port)` gives (on top of a loopback
    /// bind, no persistence and a working directory of its own) until
    /// `ready` answers within [`READY_TIMEOUT`]; three tries, in case a free
    /// port got taken in between.
    fn spawn(args: impl Fn(u16) -> (Vec<String>, Option<u16>), ready: impl Fn(&RedisServer) -> bool) -> RedisServer {
        for _ in 0..3 {
            let dir = tempfile::tempdir().expect("temp dir");
            let port = super::free_port();
            let (args, bus_port) = args(port);
            let child = Command::new("redis-server")
                .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
                .args(&args)
                .arg("--dir")
                .arg(dir.path())
                .arg("--logfile")
                .arg(dir.path().join("redis.log"))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn redis-server");
            let mut server = RedisServer {
                child,
                port,
                bus_port,
                dir,
            };
            if server.wait_ready(&ready) {
                return server;
            }
            eprintln!("redis-server did not come up:\n{}", server.log());
        }
        panic!("redis-server did not become ready");
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// The server's own log, for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("redis.log")).unwrap_or_default()
    }

    /// A plain connection to this server alone (not cluster-aware).
    pub fn connection(&self) -> redis::Connection {
        redis::Client::open(self.url())
            .and_then(|c| c.get_connection_with_timeout(Duration::from_secs(2)))
            .expect("connect to redis-server")
    }

    fn pings(&self) -> bool {
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
        let mut buf = [0u8; 16];
        s.write_all(b"PING\r\n").is_ok() && s.read(&mut buf).is_ok_and(|n| buf[..n].starts_with(b"+PONG"))
    }

    fn wait_ready(&mut self, ready: &impl Fn(&RedisServer) -> bool) -> bool {
        let deadline = Instant::now() + READY_TIMEOUT;
        for attempt in 0u64..200 {
            if let Ok(Some(_)) = self.child.try_wait() {
                return false;
            }
            if ready(self) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis((5 * (attempt + 1)).min(100)));
        }
        false
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A Redis Cluster of masters only, on 127.0.0.1: the slots split evenly in
/// order (node 0 has the lowest), every node met, `cluster_state:ok` on all.
pub struct RedisCluster {
    pub nodes: Vec<RedisServer>,
}

impl RedisCluster {
    /// A formed cluster of `masters` nodes.
    pub fn start(masters: usize) -> Option<RedisCluster> {
        let cluster = RedisCluster::unformed(masters)?;
        cluster.form();
        Some(cluster)
    }

    /// `masters` cluster-enabled nodes that know nothing of each other and
    /// serve no slot yet (`cluster_state:fail`) until [`RedisCluster::form`].
    pub fn unformed(masters: usize) -> Option<RedisCluster> {
        let nodes = (0..masters)
            .map(|_| RedisServer::start_cluster_node())
            .collect::<Option<Vec<_>>>()?;
        Some(RedisCluster { nodes })
    }

    /// Assign the slots, meet every node, and wait (bounded) for
    /// `cluster_state:ok` on all of them.
    pub fn form(&self) {
        let cluster = self;
        let masters = self.nodes.len();
        for (i, node) in cluster.nodes.iter().enumerate() {
            let (first, last) = cluster.slots(i);
            redis::cmd("CLUSTER")
                .arg("ADDSLOTS")
                .arg((first..=last).collect::<Vec<u16>>())
                .exec(&mut node.connection())
                .expect("CLUSTER ADDSLOTS");
        }
        let mut first = cluster.nodes[0].connection();
        for node in &cluster.nodes[1..] {
            redis::cmd("CLUSTER")
                .arg("MEET")
                .arg("127.0.0.1")
                .arg(node.port)
                .arg(node.bus_port.expect("a cluster node"))
                .exec(&mut first)
                .expect("CLUSTER MEET");
        }
        let deadline = Instant::now() + CLUSTER_TIMEOUT;
        let want = format!("cluster_known_nodes:{masters}");
        loop {
            let ok = cluster.nodes.iter().all(|n| {
                redis::cmd("CLUSTER")
                    .arg("INFO")
                    .query::<String>(&mut n.connection())
                    .is_ok_and(|info| info.contains("cluster_state:ok") && info.contains(&want))
            });
            if ok {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the cluster did not reach cluster_state:ok in {CLUSTER_TIMEOUT:?}:\n{}",
                cluster.nodes[0].log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The slot range node `i` serves.
    pub fn slots(&self, i: usize) -> (u16, u16) {
        let n = self.nodes.len() as u16;
        let first = SLOTS / n * i as u16;
        let last = if i as u16 == n - 1 {
            SLOTS - 1
        } else {
            SLOTS / n * (i as u16 + 1) - 1
        };
        (first, last)
    }

    /// Which node serves `key`.
    pub fn owner(&self, key: &str) -> usize {
        let slot: u16 = redis::cmd("CLUSTER")
            .arg("KEYSLOT")
            .arg(key)
            .query(&mut self.nodes[0].connection())
            .expect("CLUSTER KEYSLOT");
        (0..self.nodes.len())
            .find(|&i| (self.slots(i).0..=self.slots(i).1).contains(&slot))
            .expect("every slot is served")
    }

    /// The seed URLs for `state.redis_cluster`.
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(RedisServer::url).collect()
    }
}
