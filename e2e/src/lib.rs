//! What tests need to reach the local stack (`e2e/stack.sh`): the Kubernetes client and
//! Kafka settings its `env` command exports, broker fault injection, bounded waiting.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::Api;
use kube::api::PostParams;
use rdkafka::ClientConfig;

#[derive(Debug, thiserror::Error)]
pub enum StackError {
    #[error(
        "{0} is not set: bring the stack up with `e2e/stack.sh up`, then `eval \"$(e2e/stack.sh env)\"`"
    )]
    MissingEnv(&'static str),
    #[error("could not read the pinned Kubernetes version from {path}: {reason}")]
    PinnedVersion { path: PathBuf, reason: String },
    #[error("`e2e/stack.sh {args}` failed ({status}): {stderr}")]
    Command {
        args: String,
        status: std::process::ExitStatus,
        stderr: String,
    },
    #[error("could not run e2e/stack.sh: {0}")]
    Spawn(#[from] std::io::Error),
}

/// Whether the tests run on the stack `e2e/stack.sh up` started here, or on a cluster and
/// brokers the caller brought (`OMNINODE_STACK=external`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StackKind {
    Local,
    External,
}

#[derive(Debug, Clone)]
pub struct Stack {
    pub kafka_bootstrap_servers: String,
    pub kind: StackKind,
}

impl Stack {
    /// Reads the environment `eval "$(e2e/stack.sh env)"` sets up.
    pub fn from_env() -> Result<Self, StackError> {
        std::env::var_os("KUBECONFIG").ok_or(StackError::MissingEnv("KUBECONFIG"))?;
        let kafka_bootstrap_servers = std::env::var("KAFKA_BOOTSTRAP_SERVERS")
            .map_err(|_| StackError::MissingEnv("KAFKA_BOOTSTRAP_SERVERS"))?;
        let kind = match std::env::var("OMNINODE_STACK").as_deref() {
            Ok("external") => StackKind::External,
            _ => StackKind::Local,
        };
        Ok(Self {
            kafka_bootstrap_servers,
            kind,
        })
    }

    pub async fn kube_client(&self) -> kube::Client {
        kube::Client::try_default()
            .await
            .expect("a Kubernetes client from KUBECONFIG")
    }

    /// librdkafka settings for this stack's brokers; callers add their own.
    pub fn kafka_config(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", &self.kafka_bootstrap_servers);
        config
    }

    /// The brokers' SSL listeners, as `e2e/stack.sh env` exports them for a local stack
    /// (`KAFKA_SSL_BOOTSTRAP_SERVERS`, `KAFKA_SSL_CA_FILE`). Read on demand rather than by
    /// [`Stack::from_env`], so an environment from before the listeners existed still
    /// serves every other test.
    pub fn kafka_ssl(&self) -> Result<KafkaSsl, StackError> {
        let bootstrap_servers = std::env::var("KAFKA_SSL_BOOTSTRAP_SERVERS")
            .map_err(|_| StackError::MissingEnv("KAFKA_SSL_BOOTSTRAP_SERVERS"))?;
        let ca_file = std::env::var_os("KAFKA_SSL_CA_FILE")
            .ok_or(StackError::MissingEnv("KAFKA_SSL_CA_FILE"))?;
        Ok(KafkaSsl {
            bootstrap_servers,
            ca_file: PathBuf::from(ca_file),
        })
    }

    /// Stops one broker (1, 2 or 3) and waits until its process has exited.
    pub fn kafka_stop(&self, broker: u8) -> Result<(), StackError> {
        self.kafka_stop_brokers(&[broker])
    }

    /// Starts one broker again and waits until it has registered with the cluster.
    pub fn kafka_start(&self, broker: u8) -> Result<(), StackError> {
        self.kafka_start_brokers(&[broker])
    }

    /// Stops several brokers together (a lone survivor of the quorum could not shut down
    /// cleanly after the others).
    pub fn kafka_stop_brokers(&self, brokers: &[u8]) -> Result<(), StackError> {
        stack_command("kafka-stop", brokers)
    }

    /// Starts several brokers together: with the quorum gone, none can register alone.
    pub fn kafka_start_brokers(&self, brokers: &[u8]) -> Result<(), StackError> {
        stack_command("kafka-start", brokers)
    }
}

/// The local stack's SSL listeners: TLS with a server certificate for 127.0.0.1 that the
/// stack's CA signed; no client certificate asked for.
#[derive(Debug, Clone)]
pub struct KafkaSsl {
    /// `127.0.0.1:port,...`, one SSL listener per broker.
    pub bootstrap_servers: String,
    /// The stack's CA certificate (PEM), which the brokers' certificate verifies against.
    pub ca_file: PathBuf,
}

impl KafkaSsl {
    /// librdkafka settings that reach the brokers over TLS, verifying their certificate
    /// and its name against the CA.
    pub fn kafka_config(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", &self.bootstrap_servers)
            .set("security.protocol", "ssl")
            .set("ssl.ca.location", self.ca_file.to_string_lossy());
        config
    }
}

fn stack_command(command: &str, brokers: &[u8]) -> Result<(), StackError> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("stack.sh");
    let mut args = vec![command.to_owned()];
    args.extend(brokers.iter().map(u8::to_string));
    let output = Command::new("bash").arg(script).args(&args).output()?;
    if output.status.success() {
        Ok(())
    } else {
        Err(StackError::Command {
            args: args.join(" "),
            status: output.status,
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        })
    }
}

/// The Kubernetes release the local control plane is built from, as pinned in
/// `e2e/k8s/go.mod` (for example `v1.36.3`).
pub fn pinned_kubernetes_version() -> Result<String, StackError> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("k8s/go.mod");
    let text = std::fs::read_to_string(&path).map_err(|e| StackError::PinnedVersion {
        path: path.clone(),
        reason: e.to_string(),
    })?;
    text.lines()
        .map(str::split_whitespace)
        .find_map(|mut words| match (words.next(), words.next()) {
            (Some("k8s.io/kubernetes"), Some(version)) => Some(version.to_owned()),
            _ => None,
        })
        .ok_or(StackError::PinnedVersion {
            path,
            reason: "no `k8s.io/kubernetes vX.Y.Z` requirement".into(),
        })
}

/// The address of this machine that Pods on the stack's node reach (`OMNINODE_NODE_IP`,
/// exported by `e2e/stack.sh env`): a server a test runs for Pods to call (a consumer's
/// sink) listens there. A Pod's own loopback is its own, so 127.0.0.1 would not do.
pub fn node_ip() -> Result<std::net::IpAddr, StackError> {
    let ip = std::env::var("OMNINODE_NODE_IP")
        .map_err(|_| StackError::MissingEnv("OMNINODE_NODE_IP"))?;
    ip.parse()
        .map_err(|_| StackError::MissingEnv("OMNINODE_NODE_IP (an IP address)"))
}

/// The busybox image in the stack's registry (`OMNINODE_BUSYBOX_IMAGE`, exported by
/// `e2e/stack.sh env`): `sh`, `cat` and a few other applets, user 65532 by default. The
/// product's image has no shell; a test Pod that must run a command runs this one.
pub fn busybox_image() -> Result<String, StackError> {
    std::env::var("OMNINODE_BUSYBOX_IMAGE")
        .map_err(|_| StackError::MissingEnv("OMNINODE_BUSYBOX_IMAGE"))
}

/// A name no other test run has used: a DNS label (lowercase, digits, dashes) that starts
/// with `prefix`, so tests can share one cluster and one Kafka without colliding.
pub fn unique_name(prefix: &str) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or_default();
    format!(
        "{prefix}-{}-{:x}{}",
        std::process::id(),
        nanos,
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// Polls `probe` every 250 ms until it yields a value; panics naming `what` once `bound`
/// has passed. Every wait in the tests is bounded through this.
pub async fn eventually<T, F, Fut>(what: &str, bound: Duration, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let started = Instant::now();
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        if started.elapsed() > bound {
            panic!("timed out after {bound:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Waits until the CRD `name` (`<plural>.<group>`) is Established.
pub async fn crd_established(client: &kube::Client, name: &str) {
    let crds = Api::<CustomResourceDefinition>::all(client.clone());
    eventually(
        &format!("CRD {name} to be Established"),
        Duration::from_secs(60),
        || async {
            let crd = crds.get(name).await.ok()?;
            let established = crd
                .status?
                .conditions?
                .iter()
                .any(|c| c.type_ == "Established" && c.status == "True");
            established.then_some(())
        },
    )
    .await;
}

/// A namespace of one test's own, deleted (without waiting) when the value drops, even
/// when the test fails.
pub struct TestNamespace {
    pub name: String,
}

impl TestNamespace {
    /// Creates the namespace and waits for its default ServiceAccount, without which the
    /// API server admits no Pods there.
    pub async fn create(client: &kube::Client, prefix: &str) -> Self {
        let name = unique_name(prefix);
        let namespace: Namespace =
            serde_json::from_value(serde_json::json!({"metadata": {"name": name}})).unwrap();
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &namespace)
            .await
            .expect("namespace created");
        let accounts = Api::<ServiceAccount>::namespaced(client.clone(), &name);
        eventually(
            "the default ServiceAccount",
            Duration::from_secs(60),
            || async { accounts.get_opt("default").await.ok().flatten() },
        )
        .await;
        Self { name }
    }
}

impl Drop for TestNamespace {
    fn drop(&mut self) {
        // Blocking and outside the test's runtime, which may already be shutting down.
        // The test's operator is gone by now, so nothing would ever remove the spool
        // finalizer of a WebhookIngress left here: the test discards its spools instead.
        let ingresses = Command::new("kubectl")
            .args(["get", "webhookingresses", "-n", &self.name, "-o", "name"])
            .output();
        for ingress in ingresses
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default()
            .lines()
        {
            let _ = Command::new("kubectl")
                .args(["patch", ingress, "-n", &self.name, "--type=merge"])
                .args(["-p", r#"{"metadata":{"finalizers":null}}"#])
                .output();
        }
        let _ = Command::new("kubectl")
            .args([
                "delete",
                "namespace",
                &self.name,
                "--wait=false",
                "--ignore-not-found",
            ])
            .output();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unique_names_are_dns_labels_and_differ() {
        let a = unique_name("t");
        let b = unique_name("t");
        assert_ne!(a, b);
        assert!(a.len() <= 63);
        assert!(
            a.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        );
    }

    #[test]
    fn pinned_version_is_read_from_the_go_module() {
        let version = pinned_kubernetes_version().unwrap();
        assert!(version.starts_with("v1."), "{version}");
    }
}
