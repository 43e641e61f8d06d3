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
use pingora::listeners::ListenerConfig;
use pingora::protocols::l4::stream::L4BufferSettings;
use pingora::proxy::{http_proxy, HttpProxy};
use pingora::server::configuration::{Opt, ServerConf};
use pingora::server::Server;
use pingora::services::listening::Service;

use crate::config::Config;
use crate::gateway::connection::Connections;
use crate::gateway::health_check::ActiveHealth;
use crate::gateway::{local::Counters, Gateway, Role, Shared};
use crate::runtime::{ConfigStore, Snapshot};
use crate::upstream::Upstreams;

pub struct ServeOptions {
    pub upgrade: bool,
    pub daemon: bool,
}

/// An empty PEM file: no CA roots (see `run`).
const NO_CA_ROOTS: &str = "/dev/null";

/// How long shutdown waits for runtimes after the grace period ends.
const SHUTDOWN_TIMEOUT_SECS: u64 = 5;

/// The process settings the gateway and `modelgate proxy` share:
/// `threads`, daemon mode, `grace_period`.
fn process_conf(c: &Config, daemon: bool) -> ServerConf {
    ServerConf {
        threads: c
            .threads
            .unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)),
        daemon,
        // With -d, the launching process returns only once the daemon is
        // serving, so init scripts and `serve -u -d` see real failures.
        daemon_wait_for_ready: daemon,
        grace_period_seconds: Some(c.grace_period.0.as_secs()),
        graceful_shutdown_timeout_seconds: Some(SHUTDOWN_TIMEOUT_SECS),
        ..ServerConf::default()
    }
}

/// A Pingora server with `conf`, taking the sockets over with `-u`.
fn pingora_server(conf: ServerConf, opts: &ServeOptions) -> Server {
    let opt = Opt {
        upgrade: opts.upgrade,
        daemon: opts.daemon,
        nocapture: false,
        test: false,
        conf: None,
    };
    Server::new_with_opt_and_conf(opt, conf)
}

pub fn server_conf(snap: &Snapshot, daemon: bool) -> ServerConf {
    let c = &snap.config;
    let mut conf = ServerConf {
        upstream_keepalive_pool_size: c.pool_size.max(1),
        ..process_conf(c, daemon)
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

/// A plaintext listener whose connections read straight into Pingora's own
/// header and body buffers. Pingora's default 64 KiB L4 read buffer exists
/// for TLS (which reads 16 KiB records); on plain TCP it is one more copy of
/// every request and, while a stream is open, 64 KiB of memory per client.
fn plain_listener(addr: std::net::SocketAddr) -> ListenerConfig {
    ListenerConfig::tcp(addr.to_string()).l4_buffer(L4BufferSettings::default().read(0))
}

/// A listening service for `role`: the gateway as Pingora's HTTP
/// application, with the connection behaviour of [`Connections`].
fn http_service(
    conf: &Arc<ServerConf>,
    shared: &Arc<Shared>,
    role: Role,
    name: &str,
) -> Service<Connections<HttpProxy<Gateway>>> {
    let gateway = Gateway {
        shared: shared.clone(),
        role,
    };
    let app = Connections {
        inner: Arc::new(http_proxy(conf, gateway)),
        shared: shared.clone(),
    };
    Service::new(name.to_string(), app)
}

/// Build and run the server; returns only if Pingora does (it normally exits the process).
pub fn run(
    snapshot: Snapshot,
    config_path: PathBuf,
    overrides: Box<dyn Fn(&mut Config) + Send + Sync>,
    opts: ServeOptions,
) {
    let conf = server_conf(&snapshot, opts.daemon);
    let snapshot_grace = snapshot.config.grace_period.0;
    let listen = snapshot.listen;
    let admin_listen = snapshot.admin_listen;
    for w in &snapshot.warnings {
        log::warn!("config: {w}");
    }
    let connector_opts = ConnectorOptions::from_server_conf(&conf);
    let mut server = pingora_server(conf, &opts);
    // Bootstrap (taking the listening sockets over from a running process
    // with -u) runs as a service: in daemon mode it then happens after the
    // fork, which is when Pingora tells the launching process (waiting with
    // `daemon_wait_for_ready`) that the daemon is up. The listeners depend
    // on it.
    let bootstrap = server.bootstrap_as_a_service();

    let policy = match crate::policy::Policy::new(&snapshot.config.state) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("modelgate: {e}");
            std::process::exit(2);
        }
    };
    // Check the ledger and audit log once here, so a bad path fails before
    // the listeners start; the serving process opens them after any fork.
    if let Err(e) = crate::store::Sinks::check(&snapshot.config.store, &snapshot.config.state, &snapshot.config.audit) {
        eprintln!("modelgate: {e}");
        std::process::exit(2);
    }
    let shared = Arc::new(Shared {
        policy,
        sinks: Default::default(),
        caches: Default::default(),
        recent_errors: Default::default(),
        ledger_seeded_through: Default::default(),
        services_draining: std::sync::atomic::AtomicUsize::new(1 + usize::from(admin_listen.is_some())),
        config: Arc::new(ConfigStore::new(snapshot, config_path, overrides)),
        upstreams: Upstreams::new(connector_opts),
        health: Default::default(),
        draining: Default::default(),
        started: Instant::now(),
        counters: Counters::default(),
        signin: Default::default(),
        otlp: Default::default(),
        otel: Default::default(),
        live: Default::default(),
    });
    // What Pingora's HttpProxy is built from. Every request is answered in
    // `request_filter` (it always returns `Ok(true)`), so the upstream
    // connector HttpProxy makes for itself is never used; its CA roots come
    // from an empty file instead of the system bundle, which it would parse
    // into two root stores of its own (one per HTTP version) in every
    // listening service: about 0.3 MB of an idle gateway's memory. Were a
    // request ever to reach its upstream phases, TLS there fails closed.
    // The gateway's own connectors (`Upstreams`) keep the system roots.
    let conf = Arc::new(ServerConf {
        ca_file: Some(NO_CA_ROOTS.into()),
        ..server_conf(&shared.config.snapshot(), opts.daemon)
    });
    let mut main = http_service(&conf, &shared, Role::Main, "modelgate");
    main.add_listener(plain_listener(listen));
    // The ledger and audit log are open before the first request is taken,
    // so no request goes unrecorded.
    let sinks = server.add_service(pingora::services::background::background_service(
        "usage sinks",
        SinksService { shared: shared.clone() },
    ));
    // Keys and teams created at run time (a PostgreSQL store): loaded (or
    // given up on, bounded) before the listener takes its first request.
    let store_keys = server.add_service(pingora::services::background::background_service(
        "store keys",
        KeySync { shared: shared.clone() },
    ));
    store_keys.add_dependency(&sinks);
    let main = server.add_service(main);
    main.add_dependency(&bootstrap);
    main.add_dependency(&sinks);
    main.add_dependency(&store_keys);
    if opts.upgrade && shared.policy.memory().is_some() {
        let catch_up = server.add_service(pingora::services::background::background_service(
            "budget catch-up",
            CatchUp {
                shared: shared.clone(),
                grace: snapshot_grace,
            },
        ));
        catch_up.add_dependency(&sinks);
    }
    // Pingora gives every background service a runtime and a thread of its
    // own; these five only await (timers, signals, sockets; their blocking
    // work goes to `spawn_blocking`) and share one.
    server.add_service(pingora::services::background::background_service(
        "upkeep",
        Upkeep(vec![
            Arc::new(DrainWatch {
                phases: std::sync::Mutex::new(Some(server.watch_execution_phase())),
                drain: Box::new(GatewayDrain(shared.clone())),
            }),
            Arc::new(ReloadTriggers { shared: shared.clone() }),
            Arc::new(crate::gateway::signin::SessionSync { shared: shared.clone() }),
            Arc::new(ActiveHealth { shared: shared.clone() }),
            Arc::new(OtelService { shared: shared.clone() }),
        ]),
    ));
    if let Some(admin) = admin_listen {
        let mut svc = http_service(&conf, &shared, Role::Admin, "modelgate-admin");
        svc.add_listener(plain_listener(admin));
        let admin = server.add_service(svc);
        admin.add_dependency(&bootstrap);
        admin.add_dependency(&sinks);
    }
    log::info!(
        "modelgate {} listening on {listen}{}",
        env!("CARGO_PKG_VERSION"),
        admin_listen.map(|a| format!(", admin on {a}")).unwrap_or_default()
    );
    server.run(pingora::server::RunArgs::default());
    // Every request has finished (or the grace period ran out): write what
    // the ledger and audit queues still hold before the process ends.
    close_outputs(&shared);
    std::process::exit(0);
}

/// Write what the ledger and audit queues still hold, and send the last
/// OTLP exports, side by side (each bounded by 10 s). Blocking: at the
/// process's end, off the async workers.
fn close_outputs(shared: &Shared) {
    std::thread::scope(|scope| {
        if let Some(otel) = shared.otel.get() {
            scope.spawn(|| otel.shutdown());
        }
        if let Some(sinks) = shared.sinks.get() {
            sinks.close(std::time::Duration::from_secs(10));
        }
    });
}

/// Build and run `modelgate proxy`'s server: the forward proxy as the one
/// listening service, with the gateway's process settings (`threads`,
/// `grace_period`) and its own upgrade socket and pid file per port
/// (`/tmp/modelgate-proxy-<port>.{upgrade.sock,pid}`), so `modelgate proxy
/// -u` takes the sockets over from a running proxy on the same port and a
/// proxy never collides with a gateway. Returns only if Pingora does.
pub fn run_forward_proxy(settings: crate::forward::Settings, config: &Config, opts: ServeOptions) {
    let listen = settings.listen;
    let port = listen.port();
    let conf = ServerConf {
        upgrade_sock: format!("/tmp/modelgate-proxy-{port}.upgrade.sock"),
        pid_file: format!("/tmp/modelgate-proxy-{port}.pid"),
        ..process_conf(config, opts.daemon)
    };
    let mut server = pingora_server(conf, &opts);
    let bootstrap = server.bootstrap_as_a_service();
    let proxy = crate::forward::ForwardProxy::new(settings);
    let open = proxy.open_count();
    let mut svc = Service::new("modelgate-proxy".to_string(), proxy);
    svc.add_listener(plain_listener(listen));
    server.add_service(svc).add_dependency(&bootstrap);
    server.add_service(pingora::services::background::background_service(
        "drain watch",
        DrainWatch {
            phases: std::sync::Mutex::new(Some(server.watch_execution_phase())),
            drain: Box::new(ProxyDrain(open)),
        },
    ));
    log::info!(
        "modelgate {} forward proxy listening on {listen}",
        env!("CARGO_PKG_VERSION")
    );
    server.run(pingora::server::RunArgs::default());
    std::process::exit(0);
}

/// The forward proxy drains when no client connection or tunnel is open.
struct ProxyDrain(Arc<std::sync::atomic::AtomicUsize>);

#[async_trait::async_trait]
impl Drain for ProxyDrain {
    fn begin(&self) {}

    fn still_open(&self) -> Option<String> {
        let open = self.0.load(std::sync::atomic::Ordering::Acquire);
        (open != 0).then(|| format!("{open} connections and tunnels open"))
    }

    async fn finish(&self) {
        log::info!("drained: no connection open; exiting");
    }
}

/// Background services run side by side in one service: each one's `start`
/// (none signals readiness: nothing waits for them) as a task of its own on
/// the service's single runtime thread, each given the shutdown watch. A
/// panic ends only its own task (and is logged), as it would have ended only
/// its own service.
struct Upkeep(Vec<Arc<dyn pingora::services::background::BackgroundService + Send + Sync>>);

#[async_trait::async_trait]
impl pingora::services::background::BackgroundService for Upkeep {
    async fn start(&self, shutdown: pingora::server::ShutdownWatch) {
        let tasks: Vec<_> = self
            .0
            .iter()
            .map(|s| {
                let (s, shutdown) = (s.clone(), shutdown.clone());
                tokio::spawn(async move { s.start(shutdown).await })
            })
            .collect();
        for task in tasks {
            if let Err(e) = task.await {
                log::error!("a background task ended: {e}");
            }
        }
    }
}

/// Starts the gateway's own OTLP export (`telemetry.otlp`) in the serving
/// process. The export thread (with a runtime of its own) starts here,
/// after the daemon fork; it is opened from a thread outside every runtime,
/// so that building its runtime never happens on an async worker. Changing
/// `telemetry.otlp` takes a restart.
struct OtelService {
    shared: Arc<Shared>,
}

#[async_trait::async_trait]
impl pingora::services::background::BackgroundService for OtelService {
    async fn start(&self, _shutdown: pingora::server::ShutdownWatch) {
        let snap = self.shared.config.snapshot();
        let Some(config) = snap.config.telemetry.otlp.clone() else {
            return;
        };
        if !(config.traces || config.metrics || config.propagate) {
            return;
        }
        let opened = tokio::task::spawn_blocking(move || {
            std::thread::Builder::new()
                .name("otlp-open".into())
                .spawn(move || crate::otel::Otel::open(&config))
                .map_err(|e| e.to_string())?
                .join()
                .map_err(|_| "the OTLP exporter panicked while starting".to_string())?
        })
        .await;
        match opened {
            Ok(Ok(otel)) => {
                log::info!("OTLP export: {otel:?}");
                let _ = self.shared.otel.set(otel);
            }
            Ok(Err(e)) => log::error!("OTLP export: {e}; the gateway's traces and metrics are not exported"),
            Err(e) => log::error!("OTLP export: {e}"),
        }
    }
}

/// Opens the ledger and audit log in the serving process, and rebuilds the
/// embedded budgets' spend from the ledger.
struct SinksService {
    shared: Arc<Shared>,
}

#[async_trait::async_trait]
impl pingora::services::background::BackgroundService for SinksService {
    /// Ready (and the listeners start) only once the sinks are open.
    async fn start_with_ready_notifier(
        &self,
        _shutdown: pingora::server::ShutdownWatch,
        ready: pingora::services::ServiceReadyNotifier,
    ) {
        self.open().await;
        ready.notify_ready();
    }
}

impl SinksService {
    async fn open(&self) {
        let shared = self.shared.clone();
        let opened = tokio::task::spawn_blocking(move || {
            let snap = shared.config.snapshot();
            let c = &snap.config;
            match crate::store::Sinks::open(&c.store, &c.state, &c.audit) {
                Ok(s) => {
                    let _ = shared.sinks.set(s);
                }
                Err(e) => log::error!("usage sinks: {e}; requests are not recorded"),
            }
        })
        .await;
        if let Err(e) = opened {
            log::error!("usage sinks: {e}");
        }
        let snap = self.shared.config.snapshot();
        if let Some(last) = crate::gateway::meter::seed_budgets(&self.shared, &snap).await {
            let _ = self.shared.ledger_seeded_through.set(last);
        }
    }
}

/// After a graceful upgrade, the old process keeps serving its open streams
/// and records them in the same ledger. The embedded budgets of this one
/// were seeded before those records existed: this adds them as they land
/// (rows another process wrote, after the ones the seed saw), once a
/// second, until the old process's grace period is over.
struct CatchUp {
    shared: Arc<Shared>,
    grace: std::time::Duration,
}

/// Rows read per catch-up round at most.
const CATCH_UP_BATCH: usize = 10_000;

#[async_trait::async_trait]
impl pingora::services::background::BackgroundService for CatchUp {
    async fn start(&self, mut shutdown: pingora::server::ShutdownWatch) {
        let Some(&seen) = self.shared.ledger_seeded_through.get() else {
            return;
        };
        let until = Instant::now() + self.grace + std::time::Duration::from_secs(10);
        let mut after = seen;
        while Instant::now() < until {
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
            }
            if let Some(last) = catch_up(&self.shared, after).await {
                after = last;
            }
        }
    }
}

/// One round of [`CatchUp`]: add the other process's rows after `after` to
/// the embedded budgets; the last row's id, when there were any.
async fn catch_up(shared: &Shared, after: i64) -> Option<i64> {
    use crate::policy::{period, usd_to_nanos, Standing};
    let memory = shared.policy.memory()?;
    let snap = shared.config.snapshot();
    let reader = crate::gateway::meter::ledger_reader(shared, &snap).await.ok()?;
    let rows = match reader.others_after(after, CATCH_UP_BATCH).await {
        Ok(rows) => rows,
        Err(e) => {
            log::warn!("budget catch-up: {e}");
            return None;
        }
    };
    let scopes: std::collections::HashMap<Arc<str>, Arc<crate::policy::ScopeLimits>> = shared
        .config
        .store_keys
        .scopes(&snap)
        .into_iter()
        .map(|s| (s.id.clone(), s))
        .collect();
    let now = period::now_ms();
    for row in &rows {
        let ids = [
            row.key.as_ref().map(|k| format!("key:{k}")),
            row.team.as_ref().map(|t| format!("team:{t}")),
        ];
        for id in ids.into_iter().flatten() {
            let Some(scope) = scopes.get(id.as_str()) else { continue };
            let window = period::Window::of(scope.period, now);
            if row.ts_ms >= window.start_ms {
                let delta = Standing {
                    spent_nanos: usd_to_nanos(row.cost_usd) as i64,
                    requests: 1,
                    usage: row.usage,
                };
                memory.add(scope, window, delta);
            }
        }
    }
    if !rows.is_empty() {
        log::info!(
            "budget catch-up: added {} records the previous process wrote while draining",
            rows.len()
        );
    }
    rows.last().map(|r| r.id)
}

/// Keeps `ConfigStore::store_keys` in step with the store's keys and teams
/// tables: at once when a change is notified (LISTEN), and every
/// [`KEY_REFRESH`] regardless (a lost notification). Ready after the first
/// load, or after [`KEY_FIRST_LOAD`] when the store does not answer: config
/// keys and teams work meanwhile.
struct KeySync {
    shared: Arc<Shared>,
}

const KEY_REFRESH: std::time::Duration = std::time::Duration::from_secs(3);
const KEY_FIRST_LOAD: std::time::Duration = std::time::Duration::from_secs(5);

#[async_trait::async_trait]
impl pingora::services::background::BackgroundService for KeySync {
    async fn start_with_ready_notifier(
        &self,
        mut shutdown: pingora::server::ShutdownWatch,
        ready: pingora::services::ServiceReadyNotifier,
    ) {
        let Some(store) = self.shared.sinks.get().and_then(|s| s.ledger.key_store()) else {
            ready.notify_ready();
            return;
        };
        let mut last = KeyLoad::default();
        let _ = tokio::time::timeout(KEY_FIRST_LOAD, last.refresh(&self.shared, &store)).await;
        ready.notify_ready();
        let mut listening = crate::store::postgres::Listening::default();
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = listening.round(KEY_REFRESH, || async { Some(store.watch().await) }) => {}
            }
            last.refresh(&self.shared, &store).await;
        }
    }
}

/// What the last refresh loaded, so only changes are logged.
#[derive(Default)]
struct KeyLoad {
    rows: Option<crate::runtime::keyring::StoreRows>,
    version: String,
    warnings: Vec<String>,
    failing: bool,
}

impl KeyLoad {
    async fn refresh(&mut self, shared: &Arc<Shared>, store: &crate::store::keys::KeyStore) {
        let loaded =
            async { Ok::<_, crate::store::postgres::PgError>((store.active().await?, store.teams().active().await?)) };
        let rows = match loaded.await {
            Ok((keys, teams)) => crate::runtime::keyring::StoreRows { keys, teams },
            Err(e) => {
                if !self.failing {
                    log::warn!(
                        "store keys: {e}; keeping the {} keys and {} teams loaded before",
                        shared.config.store_keys.len(),
                        shared.config.store_keys.teams()
                    );
                    self.failing = true;
                }
                return;
            }
        };
        if self.failing {
            log::info!("store keys: the store answers again");
            self.failing = false;
        }
        let snap = shared.config.snapshot();
        if self.rows.as_ref() == Some(&rows) && self.version == snap.version {
            return;
        }
        let counts = (rows.keys.len(), rows.teams.len());
        let (view, warnings) = crate::runtime::keyring::View::compile(&snap, rows.clone());
        // Scopes new to this process start from the ledger's history before
        // a request can charge them (embedded budgets).
        crate::gateway::meter::seed_scopes(shared, &snap, view.scopes(&snap)).await;
        shared.config.store_keys.install(view);
        for w in warnings.iter().filter(|w| !self.warnings.contains(w)) {
            log::warn!("{w}");
        }
        let before = self.rows.as_ref().map(|r| (r.keys.len(), r.teams.len()));
        if before != Some(counts) {
            log::info!(
                "store keys: {} active, {} store teams",
                shared.config.store_keys.len(),
                shared.config.store_keys.teams()
            );
        }
        self.rows = Some(rows);
        self.version = snap.version.clone();
        self.warnings = warnings;
    }
}

/// Reload triggers: SIGHUP, and changes to the config file (debounced:
/// editors write a file in several steps). The reload itself runs on a
/// blocking thread, never on a request worker.
struct ReloadTriggers {
    shared: Arc<Shared>,
}

/// Quiet time after the last file event before reloading.
const DEBOUNCE: std::time::Duration = std::time::Duration::from_millis(250);

#[async_trait::async_trait]
impl pingora::services::background::BackgroundService for ReloadTriggers {
    async fn start(&self, mut shutdown: pingora::server::ShutdownWatch) {
        use tokio::signal::unix::{signal, SignalKind};
        let mut hangup = match signal(SignalKind::hangup()) {
            Ok(s) => Some(s),
            Err(e) => {
                log::error!("cannot listen for SIGHUP, reload by file change only: {e}");
                None
            }
        };
        let (tx, mut changed) = tokio::sync::mpsc::channel::<()>(8);
        let store = &self.shared.config;
        let _watcher = watch_file(store.path(), tx);
        loop {
            let hup = async {
                match hangup.as_mut() {
                    Some(h) => h.recv().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = shutdown.changed() => return,
                Some(()) = hup => {
                    log::info!("SIGHUP: reloading {}", store.path().display());
                    // The usual log-rotation convention: reopen the audit file.
                    if let Some(audit) = self.shared.sinks.get().and_then(|s| s.audit.as_ref()) {
                        audit.reopen();
                    }
                }
                Some(()) = changed.recv() => {
                    // Let a burst of writes settle, then reload once.
                    while let Ok(Some(())) = tokio::time::timeout(DEBOUNCE, changed.recv()).await {}
                    log::info!("{} changed: reloading", store.path().display());
                }
            }
            let shared = self.shared.clone();
            let reloaded = tokio::task::spawn_blocking(move || {
                shared.config.reload();
                let snap = shared.config.snapshot();
                if let Some(audit) = shared.sinks.get().and_then(|s| s.audit.as_ref()) {
                    audit.set_log_prompts(snap.config.audit.log_prompts);
                }
                snap
            });
            match reloaded.await {
                // Scopes the new config adds start from their history.
                Ok(snap) => {
                    crate::gateway::meter::seed_budgets(&self.shared, &snap).await;
                }
                Err(e) => log::error!("config reload task failed: {e}"),
            }
        }
    }
}

/// Watch the config file's directory (editors replace files by rename) and
/// signal changes to that file. `None` if the platform watcher is unavailable.
fn watch_file(path: &std::path::Path, tx: tokio::sync::mpsc::Sender<()>) -> Option<notify::RecommendedWatcher> {
    use notify::{RecursiveMode, Watcher};
    let absolute = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    let dir = absolute.parent()?.to_path_buf();
    let name = absolute.file_name()?.to_os_string();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if let Ok(event) = event {
            // Kubernetes mounts a ConfigMap file as a symlink through `..data`,
            // which it swaps atomically: that swap is the change.
            let ours = event
                .paths
                .iter()
                .any(|p| p.file_name() == Some(name.as_os_str()) || p.file_name() == Some("..data".as_ref()));
            if ours && (event.kind.is_modify() || event.kind.is_create()) {
                let _ = tx.try_send(());
            }
        }
    })
    .map_err(|e| log::warn!("config file watch unavailable: {e}"))
    .ok()?;
    watcher
        .watch(&dir, RecursiveMode::NonRecursive)
        .map_err(|e| log::warn!("cannot watch {}: {e}", dir.display()))
        .ok()?;
    Some(watcher)
}

/// Flags the process as draining as soon as Pingora starts a hand-over or a
/// graceful stop, before it closes anything; then ends the process as soon
/// as its last request has finished.
///
/// Pingora itself sleeps the whole `grace_period` after a SIGTERM or a
/// hand-over, busy or not, so an idle gateway would linger for 15 minutes
/// (and `docker stop` would SIGKILL it first, losing the ledger and audit
/// queues). Once Pingora has stopped accepting and entered its grace period,
/// this waits until every listening service has drained its kept-alive
/// connections (`gateway::connection`) and nothing is in flight; then it
/// flushes the ledger and audit queues and exits. Streams still open keep
/// the process up, bounded by `grace_period` as before. After a hand-over
/// Pingora keeps accepting on the shared sockets for its fixed 5 s close
/// window first, so no client meets a closed socket while the new process
/// takes over.
struct DrainWatch {
    phases: std::sync::Mutex<Option<tokio::sync::broadcast::Receiver<pingora::server::ExecutionPhase>>>,
    drain: Box<dyn Drain>,
}

/// What a server's [`DrainWatch`] waits for, and does before the exit.
#[async_trait::async_trait]
trait Drain: Send + Sync {
    /// The process stops taking work: answers now close their connections.
    fn begin(&self);
    /// What is still open (empty: the drain is done).
    fn still_open(&self) -> Option<String>;
    /// Write what the queues still hold.
    async fn finish(&self);
}

struct GatewayDrain(Arc<Shared>);

#[async_trait::async_trait]
impl Drain for GatewayDrain {
    fn begin(&self) {
        if !self.0.draining.swap(true, std::sync::atomic::Ordering::Relaxed) {
            log::info!("draining: responses now close their connections");
        }
    }

    fn still_open(&self) -> Option<String> {
        let open = self.0.counters.in_flight.load(std::sync::atomic::Ordering::Acquire);
        let services = self.0.services_draining.load(std::sync::atomic::Ordering::Acquire);
        (open != 0 || services != 0)
            .then(|| format!("{open} requests in flight, {services} services closing connections"))
    }

    async fn finish(&self) {
        log::info!(
            "drained: no request in flight; flushing the ledger, the audit log and the OTLP export, then exiting"
        );
        let shared = self.0.clone();
        let closed = tokio::task::spawn_blocking(move || close_outputs(&shared)).await;
        if let Err(e) = closed {
            log::error!("closing the usage sinks and the OTLP export failed: {e}");
        }
    }
}

/// How often the drained process checks for its last request.
const DRAIN_POLL: std::time::Duration = std::time::Duration::from_millis(50);

#[async_trait::async_trait]
impl pingora::services::background::BackgroundService for DrainWatch {
    async fn start(&self, _shutdown: pingora::server::ShutdownWatch) {
        use pingora::server::ExecutionPhase as P;
        let Some(mut phases) = self.phases.lock().unwrap_or_else(|p| p.into_inner()).take() else {
            return;
        };
        loop {
            match phases.recv().await {
                Ok(P::GracefulUpgradeTransferringFds | P::GracefulTerminate | P::ShutdownStarted) => self.drain.begin(),
                Ok(P::ShutdownGracePeriod) => break,
                Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            }
        }
        self.drain.begin();
        while let Some(open) = self.drain.still_open() {
            log::debug!("draining: {open}");
            tokio::time::sleep(DRAIN_POLL).await;
        }
        self.drain.finish().await;
        std::process::exit(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pingora::server::ShutdownWatch;
    use pingora::services::background::BackgroundService;
    use std::sync::atomic::{AtomicBool, Ordering};

    struct Panics;

    #[async_trait::async_trait]
    impl BackgroundService for Panics {
        async fn start(&self, _shutdown: ShutdownWatch) {
            panic!("a background task's bug");
        }
    }

    struct UntilShutdown(Arc<AtomicBool>);

    #[async_trait::async_trait]
    impl BackgroundService for UntilShutdown {
        async fn start(&self, mut shutdown: ShutdownWatch) {
            let _ = shutdown.changed().await;
            self.0.store(true, Ordering::Release);
        }
    }

    #[tokio::test]
    async fn upkeep_keeps_its_tasks_apart() {
        let (tx, rx) = tokio::sync::watch::channel(false);
        let stopped = Arc::new(AtomicBool::new(false));
        let upkeep = Upkeep(vec![Arc::new(Panics), Arc::new(UntilShutdown(stopped.clone()))]);
        let run = tokio::spawn(async move { upkeep.start(rx).await });
        tx.send(true).unwrap();
        tokio::time::timeout(std::time::Duration::from_secs(5), run)
            .await
            .expect("upkeep ends once its tasks do")
            .unwrap();
        // The panicking task did not take its sibling with it: the sibling
        // waited for the shutdown and saw it.
        assert!(stopped.load(Ordering::Acquire));
    }
}
