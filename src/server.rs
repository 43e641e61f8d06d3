//! Assembles the Pingora server from a validated snapshot: the main
//! listener, the optional admin listener, and the process settings
//! (`threads`, `grace_period`, `upgrade_sock`, `pid_file`) mapped onto
//! Pingora's `ServerConf`. Signals are Pingora's: SIGTERM drains for
//! `grace_period`, SIGINT stops at once, SIGQUIT hands the listening sockets
//! to a new process started with `-u`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use pingora::connectors::ConnectorOptions;
use pingora::proxy::http_proxy_service_with_name;
use pingora::server::configuration::{Opt, ServerConf};
use pingora::server::Server;

use crate::config::{ConfigStore, Snapshot};
use crate::gateway::health_check::ActiveHealth;
use crate::gateway::{local::Counters, Gateway, Role, Shared};
use crate::upstream::Upstreams;

pub struct ServeOptions {
    pub upgrade: bool,
    pub daemon: bool,
}

/// How long shutdown waits for runtimes after the grace period ends.
const SHUTDOWN_TIMEOUT_SECS: u64 = 5;

pub fn server_conf(snap: &Snapshot, daemon: bool) -> ServerConf {
    let c = &snap.config;
    let threads = c
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1));
    let mut conf = ServerConf {
        threads,
        daemon,
        grace_period_seconds: Some(c.grace_period.0.as_secs()),
        graceful_shutdown_timeout_seconds: Some(SHUTDOWN_TIMEOUT_SECS),
        ..ServerConf::default()
    };
    // Defaults are per listening port, so several gateways on one host
    // never hand their sockets to each other by accident.
    let port = snap.listen.port();
    conf.upgrade_sock = c
        .upgrade_sock
        .clone()
        .unwrap_or_else(|| format!("/tmp/modelgate-{port}.upgrade.sock"));
    conf.pid_file = c
        .pid_file
        .clone()
        .unwrap_or_else(|| format!("/tmp/modelgate-{port}.pid"));
    conf
}

/// Build and run the server; returns only if Pingora does (it normally exits the process).
pub fn run(snapshot: Snapshot, config_path: PathBuf, opts: ServeOptions) {
    let conf = server_conf(&snapshot, opts.daemon);
    let listen = snapshot.listen;
    let admin_listen = snapshot.admin_listen;
    for w in &snapshot.warnings {
        log::warn!("config: {w}");
    }
    let connector_opts = ConnectorOptions::from_server_conf(&conf);
    let opt = Opt {
        upgrade: opts.upgrade,
        daemon: opts.daemon,
        nocapture: false,
        test: false,
        conf: None,
    };
    let mut server = Server::new_with_opt_and_conf(opt, conf);
    server.bootstrap();

    let shared = Arc::new(Shared {
        config: Arc::new(ConfigStore::new(snapshot, config_path)),
        upstreams: Upstreams::new(connector_opts),
        health: Default::default(),
        started: Instant::now(),
        counters: Counters::default(),
    });
    let conf = server.configuration.clone();
    let mut main = http_proxy_service_with_name(
        &conf,
        Gateway {
            shared: shared.clone(),
            role: Role::Main,
        },
        "modelgate",
    );
    main.add_tcp(&listen.to_string());
    server.add_service(main);
    server.add_service(pingora::services::background::background_service(
        "health checks",
        ActiveHealth { shared: shared.clone() },
    ));
    if let Some(admin) = admin_listen {
        let mut svc = http_proxy_service_with_name(
            &conf,
            Gateway {
                shared,
                role: Role::Admin,
            },
            "modelgate-admin",
        );
        svc.add_tcp(&admin.to_string());
        server.add_service(svc);
    }
    log::info!(
        "modelgate {} listening on {listen}{}",
        env!("CARGO_PKG_VERSION"),
        admin_listen.map(|a| format!(", admin on {a}")).unwrap_or_default()
    );
    server.run_forever();
}
