//! One task per Pod: starts, probes, restarts and stops its processes and writes the
//! Pod's status, as the kubelet would.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Container, ContainerStatus, Pod, Probe};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use k8s_openapi::jiff::Timestamp;
use kube::api::{DeleteParams, Patch, PatchParams, Preconditions};
use kube::runtime::events::{Event, EventType};
use kube::{Api, Resource};
use serde_json::{Value, json};
use tokio::process::Child;
use tokio::sync::watch;

use super::Shared;
use super::launch::{self, Sources, Waiting};
use super::process;

/// What the main loop asks of a worker besides following its Pod.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    No,
    /// The Pod is gone without a graceful delete (force delete): kill its processes.
    Vanished,
    /// The runner is shutting down: stop the processes, leave the Pod as it is.
    Shutdown,
}

const TICK: Duration = Duration::from_millis(200);
const MAX_BACKOFF: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, PartialEq)]
enum State {
    Waiting(Waiting),
    Running {
        started_at: String,
    },
    Terminated {
        exit_code: i32,
        reason: String,
        started_at: String,
        finished_at: String,
    },
}

impl State {
    fn to_json(&self) -> Value {
        match self {
            State::Waiting(w) => json!({"waiting": {"reason": w.reason, "message": w.message}}),
            State::Running { started_at } => json!({"running": {"startedAt": started_at}}),
            State::Terminated {
                exit_code,
                reason,
                started_at,
                finished_at,
            } => json!({"terminated": {
                "exitCode": exit_code, "reason": reason,
                "startedAt": started_at, "finishedAt": finished_at,
            }}),
        }
    }
}

#[derive(Debug, Default)]
struct ProbeCounter {
    successes: i32,
    failures: i32,
    next_at: Option<Instant>,
}

struct Ctr {
    spec: Container,
    child: Option<Child>,
    pid: Option<u32>,
    state: State,
    last_state: Option<State>,
    restart_count: i32,
    has_run: bool,
    started: Option<Instant>,
    next_start: Instant,
    backoff: Duration,
    ready: bool,
    readiness: ProbeCounter,
    liveness: ProbeCounter,
    reported: Option<String>,
}

impl Ctr {
    fn new(spec: Container, previous: Option<&ContainerStatus>) -> Self {
        let restart_count = previous.map(|s| s.restart_count).unwrap_or(0);
        // A container that ran under a previous runner restarts under this one.
        let has_run = previous.is_some_and(|s| s.container_id.is_some());
        Self {
            spec,
            child: None,
            pid: None,
            state: State::Waiting(Waiting {
                reason: "ContainerCreating".into(),
                message: String::new(),
            }),
            last_state: None,
            restart_count,
            has_run,
            started: None,
            next_start: Instant::now(),
            backoff: Duration::from_secs(1),
            ready: false,
            readiness: ProbeCounter::default(),
            liveness: ProbeCounter::default(),
            reported: None,
        }
    }
}

fn now() -> String {
    Timestamp::now().to_string()
}

/// Follows one Pod until it is deleted, vanishes or the runner stops.
pub async fn run(
    shared: Arc<Shared>,
    mut pod_rx: watch::Receiver<Arc<Pod>>,
    mut stop_rx: watch::Receiver<Stop>,
) {
    let mut pod = pod_rx.borrow_and_update().clone();
    let namespace = pod.metadata.namespace.clone().unwrap_or_default();
    let name = pod.metadata.name.clone().unwrap_or_default();
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    let pod_dir = shared
        .config
        .run_dir
        .join("pods")
        .join(format!("{namespace}_{name}"));
    let pods = Api::<Pod>::namespaced(shared.client.clone(), &namespace);

    let mut worker = Worker {
        shared: shared.clone(),
        pod_dir,
        ip: None,
        containers: Vec::new(),
        conditions: HashMap::new(),
        start_time: None,
        last_status: None,
    };
    let previous: Vec<ContainerStatus> = pod
        .status
        .as_ref()
        .and_then(|s| s.container_statuses.clone())
        .unwrap_or_default();
    let containers = pod
        .spec
        .as_ref()
        .map(|s| s.containers.clone())
        .unwrap_or_default();
    worker.containers = containers
        .into_iter()
        .map(|c| {
            let prev = previous.iter().find(|p| p.name == c.name);
            Ctr::new(c, prev)
        })
        .collect();
    worker.start_time = pod
        .status
        .as_ref()
        .and_then(|s| s.start_time.as_ref())
        .map(|t| t.0.to_string());
    for c in pod
        .status
        .as_ref()
        .and_then(|s| s.conditions.clone())
        .unwrap_or_default()
    {
        if let Some(t) = c.last_transition_time {
            worker
                .conditions
                .insert(c.type_, (c.status, t.0.to_string()));
        }
    }
    if let Err(e) = std::fs::create_dir_all(&worker.pod_dir) {
        tracing::error!(error = %e, dir = %worker.pod_dir.display(), "cannot create the pod directory");
    }
    tracing::info!(node = ?pod.spec.as_ref().and_then(|s| s.node_name.clone()), "taking the pod");

    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            changed = pod_rx.changed() => {
                if changed.is_err() {
                    let _ = stop_rx.changed().await; // the main loop is going away
                } else {
                    pod = pod_rx.borrow_and_update().clone();
                }
            }
            _ = stop_rx.changed() => {}
            _ = tick.tick() => {}
        }
        let stop = *stop_rx.borrow();
        match stop {
            Stop::Shutdown => {
                worker.stop_all(Duration::from_secs(5)).await;
                break;
            }
            Stop::Vanished => {
                tracing::info!("pod is gone without a graceful delete; killing its processes");
                worker.stop_all(Duration::from_secs(2)).await;
                worker.cleanup(&uid);
                break;
            }
            Stop::No => {}
        }
        if pod.metadata.deletion_timestamp.is_some() {
            let grace = pod
                .metadata
                .deletion_grace_period_seconds
                .or_else(|| pod.spec.as_ref()?.termination_grace_period_seconds)
                .unwrap_or(30)
                .max(0);
            tracing::info!(grace, "pod is being deleted; stopping its processes");
            worker.stop_all(Duration::from_secs(grace as u64)).await;
            let params = DeleteParams {
                grace_period_seconds: Some(0),
                preconditions: Some(Preconditions {
                    uid: Some(uid.clone()),
                    resource_version: None,
                }),
                ..DeleteParams::default()
            };
            match pods.delete(&name, &params).await {
                Ok(_) => tracing::info!("processes stopped; pod deleted"),
                Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => {}
                Err(e) => {
                    tracing::warn!(error = %e, "final delete failed; retrying");
                    continue;
                }
            }
            worker.cleanup(&uid);
            break;
        }
        worker.step(&pod, &uid).await;
        worker.write_status(&pods, &name).await;
    }
}

struct Worker {
    shared: Arc<Shared>,
    pod_dir: PathBuf,
    ip: Option<Ipv4Addr>,
    containers: Vec<Ctr>,
    conditions: HashMap<String, (String, String)>,
    start_time: Option<String>,
    last_status: Option<Value>,
}

impl Worker {
    fn ip_for(&mut self, pod: &Pod, uid: &str) -> Option<Ipv4Addr> {
        if self.ip.is_none() {
            let mut ipam = self.shared.ipam.lock().expect("ipam lock");
            let current = pod
                .status
                .as_ref()
                .and_then(|s| s.pod_ip.as_deref())
                .and_then(|ip| ip.parse::<Ipv4Addr>().ok());
            self.ip = match current {
                Some(ip) if ipam.reserve(ip, uid) => Some(ip),
                _ => ipam.allocate(uid),
            };
            match self.ip {
                Some(ip) => tracing::info!(%ip, "pod IP"),
                None => tracing::error!("no free pod IP in {}", self.shared.config.pod_cidr),
            }
        }
        self.ip
    }

    async fn step(&mut self, pod: &Pod, uid: &str) {
        let Some(ip) = self.ip_for(pod, uid) else {
            return;
        };
        // The process binds (rewrite::rewrite), and is probed on, the Pod IP's loopback twin.
        let twin = bridge_e2e::loopback_twin(ip).to_string();
        let ip = ip.to_string();
        if self.start_time.is_none() {
            self.start_time = Some(now());
        }
        let policy = pod
            .spec
            .as_ref()
            .and_then(|s| s.restart_policy.clone())
            .unwrap_or_else(|| "Always".into());
        for i in 0..self.containers.len() {
            self.reap(i, &policy);
            if self.containers[i].child.is_none() && Instant::now() >= self.containers[i].next_start
            {
                self.start(i, pod, &ip).await;
            }
            if self.containers[i].child.is_some() {
                self.probe(i, &twin).await;
            }
        }
    }

    fn reap(&mut self, i: usize, policy: &str) {
        let c = &mut self.containers[i];
        let Some(child) = c.child.as_mut() else {
            return;
        };
        let status = match child.try_wait() {
            Ok(Some(status)) => status,
            Ok(None) => return,
            Err(e) => {
                tracing::warn!(error = %e, "waiting for the child failed");
                return;
            }
        };
        use std::os::unix::process::ExitStatusExt;
        let exit_code = status
            .code()
            .unwrap_or_else(|| 128 + status.signal().unwrap_or(0));
        let started_at = match &c.state {
            State::Running { started_at } => started_at.clone(),
            _ => now(),
        };
        let terminated = State::Terminated {
            exit_code,
            reason: if exit_code == 0 { "Completed" } else { "Error" }.into(),
            started_at,
            finished_at: now(),
        };
        tracing::info!(container = %c.spec.name, exit_code, "process exited");
        let _ = std::fs::remove_file(process::pid_file(&self.pod_dir, &c.spec.name));
        c.child = None;
        c.pid = None;
        c.ready = false;
        let ran_long = c
            .started
            .is_some_and(|s| s.elapsed() > Duration::from_secs(600));
        if ran_long {
            c.backoff = Duration::from_secs(1);
        }
        let restart = match policy {
            "Never" => false,
            "OnFailure" => exit_code != 0,
            _ => true,
        };
        c.last_state = Some(terminated.clone());
        if restart {
            c.next_start = Instant::now() + c.backoff;
            c.state = State::Waiting(Waiting {
                reason: "CrashLoopBackOff".into(),
                message: format!(
                    "back-off {}s restarting failed container={}",
                    c.backoff.as_secs(),
                    c.spec.name
                ),
            });
            c.backoff = (c.backoff * 2).min(MAX_BACKOFF);
        } else {
            c.state = terminated;
            c.next_start = Instant::now() + Duration::from_secs(365 * 24 * 3600);
        }
    }

    async fn start(&mut self, i: usize, pod: &Pod, ip: &str) {
        let namespace = pod.metadata.namespace.clone().unwrap_or_default();
        let sources = Sources {
            client: &self.shared.client,
            namespace: &namespace,
        };
        let config = &self.shared.config;
        let prepared =
            match launch::materialise(&sources, pod, &self.pod_dir, &config.run_dir, ip).await {
                Ok(volumes) => {
                    launch::launch(
                        &sources,
                        pod,
                        &self.containers[i].spec,
                        &volumes,
                        &config.bin_dir,
                        ip,
                    )
                    .await
                }
                Err(w) => Err(w),
            };
        let result = prepared.and_then(|l| {
            match process::spawn(&l, &self.pod_dir, &self.containers[i].spec.name) {
                Ok(child) => Ok((child, l)),
                Err(e) => Err(Waiting {
                    reason: "StartError".into(),
                    message: format!("spawning {}: {e}", l.binary.display()),
                }),
            }
        });
        let c = &mut self.containers[i];
        match result {
            Ok((child, l)) => {
                c.pid = child.id();
                tracing::info!(container = %c.spec.name, pid = ?c.pid, binary = %l.binary.display(), args = ?l.args, "process started");
                c.child = Some(child);
                if c.has_run {
                    c.restart_count += 1;
                }
                c.has_run = true;
                c.started = Some(Instant::now());
                c.state = State::Running { started_at: now() };
                c.reported = None;
                c.ready = false;
                let initial = |p: &Option<Probe>| {
                    let delay = p
                        .as_ref()
                        .and_then(|p| p.initial_delay_seconds)
                        .unwrap_or(0);
                    ProbeCounter {
                        successes: 0,
                        failures: 0,
                        next_at: Some(Instant::now() + Duration::from_secs(delay.max(0) as u64)),
                    }
                };
                c.readiness = initial(&c.spec.readiness_probe);
                c.liveness = initial(&c.spec.liveness_probe);
            }
            Err(waiting) => {
                c.next_start = Instant::now() + Duration::from_secs(2);
                if c.reported.as_deref() != Some(waiting.reason.as_str()) {
                    tracing::warn!(container = %c.spec.name, reason = %waiting.reason, message = %waiting.message, "container cannot start");
                    c.reported = Some(waiting.reason.clone());
                    let event = Event {
                        type_: EventType::Warning,
                        reason: waiting.reason.clone(),
                        note: Some(format!("container {}: {}", c.spec.name, waiting.message)),
                        action: "StartContainer".into(),
                        secondary: None,
                    };
                    if let Err(e) = self
                        .shared
                        .recorder
                        .publish(&event, &pod.object_ref(&()))
                        .await
                    {
                        tracing::warn!(error = %e, "could not record an event");
                    }
                }
                c.state = State::Waiting(waiting);
            }
        }
    }

    async fn probe(&mut self, i: usize, ip: &str) {
        let now = Instant::now();
        let c = &mut self.containers[i];
        match c.spec.readiness_probe.clone() {
            None => c.ready = true,
            Some(p) => {
                if c.readiness.next_at.is_some_and(|t| now >= t) {
                    let ok = run_probe(&self.shared.http, &p, ip, &c.spec).await;
                    let c = &mut self.containers[i];
                    update(&mut c.readiness, &p, ok);
                    if ok && c.readiness.successes >= p.success_threshold.unwrap_or(1).max(1) {
                        c.ready = true;
                    }
                    if !ok && c.readiness.failures >= p.failure_threshold.unwrap_or(3).max(1) {
                        c.ready = false;
                    }
                }
            }
        }
        let c = &mut self.containers[i];
        if let Some(p) = c.spec.liveness_probe.clone() {
            if c.liveness.next_at.is_some_and(|t| now >= t) {
                let ok = run_probe(&self.shared.http, &p, ip, &c.spec).await;
                let c = &mut self.containers[i];
                update(&mut c.liveness, &p, ok);
                if !ok && c.liveness.failures >= p.failure_threshold.unwrap_or(3).max(1) {
                    tracing::info!(container = %c.spec.name, "liveness probe failed; killing the process");
                    if let Some(pid) = c.pid {
                        process::signal(pid, libc::SIGKILL);
                    }
                    c.liveness.next_at = None;
                    c.ready = false;
                }
            }
        }
    }

    async fn stop_all(&mut self, grace: Duration) {
        let mut children: Vec<&mut Child> = self
            .containers
            .iter_mut()
            .filter_map(|c| c.child.as_mut())
            .collect();
        if !children.is_empty() {
            process::terminate(&mut children, grace).await;
        }
        for c in &mut self.containers {
            c.child = None;
            c.pid = None;
            let _ = std::fs::remove_file(process::pid_file(&self.pod_dir, &c.spec.name));
        }
    }

    /// Frees the IP and removes the materialised volumes (secrets on disk); keeps the logs.
    fn cleanup(&mut self, uid: &str) {
        self.shared.ipam.lock().expect("ipam lock").release(uid);
        let _ = std::fs::remove_dir_all(self.pod_dir.join("volumes"));
    }

    fn condition(&mut self, type_: &str, status: bool) -> Value {
        let status = if status { "True" } else { "False" };
        let entry = self
            .conditions
            .entry(type_.to_owned())
            .or_insert_with(|| (status.to_owned(), now()));
        if entry.0 != status {
            *entry = (status.to_owned(), now());
        }
        json!({"type": type_, "status": entry.0, "lastTransitionTime": entry.1})
    }

    fn status(&mut self) -> Value {
        let ip = self.ip.map(|ip| ip.to_string());
        let ready = !self.containers.is_empty()
            && self.containers.iter().all(|c| c.ready && c.child.is_some());
        let any_started = self.containers.iter().any(|c| c.has_run);
        let all_done = self
            .containers
            .iter()
            .all(|c| matches!(c.state, State::Terminated { .. }));
        let phase = if any_started && all_done {
            let ok = self
                .containers
                .iter()
                .all(|c| matches!(c.state, State::Terminated { exit_code: 0, .. }));
            if ok { "Succeeded" } else { "Failed" }
        } else if any_started {
            "Running"
        } else {
            "Pending"
        };
        let conditions = vec![
            self.condition("PodScheduled", true),
            self.condition("Initialized", true),
            self.condition("ContainersReady", ready),
            self.condition("Ready", ready),
        ];
        let statuses: Vec<Value> = self
            .containers
            .iter()
            .map(|c| {
                let running = c.child.is_some();
                let mut s = json!({
                    "name": c.spec.name,
                    "image": c.spec.image.clone().unwrap_or_default(),
                    "imageID": format!("pod-runner://{}", c.spec.image.clone().unwrap_or_default()),
                    "started": running,
                    "ready": running && c.ready,
                    "restartCount": c.restart_count,
                    "state": c.state.to_json(),
                    "lastState": c.last_state.as_ref().map(State::to_json).unwrap_or_else(|| json!({})),
                });
                if let Some(pid) = c.pid {
                    s["containerID"] = json!(format!("pod-runner://{pid}"));
                }
                s
            })
            .collect();
        let mut status = json!({
            "phase": phase,
            "hostIP": self.shared.config.host_ip,
            "hostIPs": [{"ip": self.shared.config.host_ip}],
            "startTime": self.start_time,
            "conditions": conditions,
            "containerStatuses": statuses,
        });
        if let Some(ip) = ip {
            status["podIP"] = json!(ip);
            status["podIPs"] = json!([{"ip": ip}]);
        }
        json!({"status": status})
    }

    async fn write_status(&mut self, pods: &Api<Pod>, name: &str) {
        let status = self.status();
        if self.last_status.as_ref() == Some(&status) {
            return;
        }
        match pods
            .patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
            .await
        {
            Ok(_) => {
                tracing::debug!(status = %status, "status written");
                self.last_status = Some(status);
            }
            Err(e) => tracing::warn!(error = %e, "writing the pod status failed; retrying"),
        }
    }
}

fn update(counter: &mut ProbeCounter, probe: &Probe, ok: bool) {
    if ok {
        counter.successes += 1;
        counter.failures = 0;
    } else {
        counter.failures += 1;
        counter.successes = 0;
    }
    let period = probe.period_seconds.unwrap_or(10).max(1) as u64;
    counter.next_at = Some(Instant::now() + Duration::from_secs(period));
}

fn resolve_port(port: &IntOrString, container: &Container) -> Option<u16> {
    match port {
        IntOrString::Int(p) => u16::try_from(*p).ok(),
        IntOrString::String(name) => container
            .ports
            .iter()
            .flatten()
            .find(|p| p.name.as_deref() == Some(name))
            .and_then(|p| u16::try_from(p.container_port).ok()),
    }
}

/// One probe attempt against the Pod's IP: httpGet (2xx/3xx is success), tcpSocket, or
/// exec (not supported: counts as a failure and says so).
async fn run_probe(http: &reqwest::Client, probe: &Probe, ip: &str, container: &Container) -> bool {
    let timeout = Duration::from_secs(probe.timeout_seconds.unwrap_or(1).max(1) as u64);
    if let Some(get) = &probe.http_get {
        let Some(port) = resolve_port(&get.port, container) else {
            return false;
        };
        let scheme = get.scheme.as_deref().unwrap_or("HTTP").to_ascii_lowercase();
        let path = get.path.as_deref().unwrap_or("/");
        let url = format!("{scheme}://{ip}:{port}{path}");
        let mut request = http.get(&url).timeout(timeout);
        for h in get.http_headers.iter().flatten() {
            request = request.header(h.name.as_str(), h.value.as_str());
        }
        return match request.send().await {
            Ok(r) => {
                let code = r.status().as_u16();
                (200..400).contains(&code)
            }
            Err(_) => false,
        };
    }
    if let Some(tcp) = &probe.tcp_socket {
        let Some(port) = resolve_port(&tcp.port, container) else {
            return false;
        };
        return matches!(
            tokio::time::timeout(timeout, tokio::net::TcpStream::connect((ip, port))).await,
            Ok(Ok(_))
        );
    }
    tracing::warn!(container = %container.name, "only httpGet and tcpSocket probes are supported");
    false
}
