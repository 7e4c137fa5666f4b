//! What the stack's kubelet enforces on the receivers the operator runs: the restricted
//! security context (user 65532, a read-only root filesystem, the spool the only place it
//! can write), the liveness probe that restarts a wedged receiver, and a rollout onto a new
//! image. The checks look at
//! the container's process from this machine, as the kubelet left it (`crictl inspect`
//! for its PID, `/proc`), since the image has no shell to ask from inside.

mod support;

use std::process::Command;
use std::time::Duration;

use bridge_api::WebhookIngress;
use bridge_e2e::{Stack, TestNamespace, eventually};
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::api::{Api, ListParams, PostParams};
use serde_json::json;
use support::{BOUND, Operator};

/// A one-replica GitHub WebhookIngress, Ready, in a namespace of its own.
struct Receiver {
    ns: TestNamespace,
    operator: Operator,
    pods: Api<Pod>,
}

impl Receiver {
    async fn start(prefix: &str) -> Self {
        let client = Stack::from_env().unwrap().kube_client().await;
        let ns = TestNamespace::create(&client, prefix).await;
        let operator = Operator::start(&[&ns.name]).await;
        support::ready_event_topic(&client, &ns.name, "node", "node", 1).await;
        let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns.name);
        let secret: Secret = serde_json::from_value(
            json!({"metadata": {"name": "github"}, "stringData": {"secret": "s3cret"}}),
        )
        .unwrap();
        secrets
            .create(&PostParams::default(), &secret)
            .await
            .unwrap();
        let ingresses: Api<WebhookIngress> = Api::namespaced(client.clone(), &ns.name);
        let ingress: WebhookIngress = serde_json::from_value(json!({
            "apiVersion": "bridge.omninode.io/v1alpha1",
            "kind": "WebhookIngress",
            "metadata": {"name": "github"},
            "spec": {"replicas": 1, "routes": [{
                "name": "github", "path": "/github", "topic": "node",
                "auth": {"github": {"secretRef": {"name": "github"}}},
            }]},
        }))
        .unwrap();
        ingresses
            .create(&PostParams::default(), &ingress)
            .await
            .unwrap();
        eventually("one ready receiver and Ready=True", BOUND, || async {
            let status = ingresses.get("github").await.ok()?.status?;
            let ready = bridge_api::find_condition(&status.conditions, "Ready")?;
            (ready.status == "True" && status.ready_replicas == Some(1)).then_some(())
        })
        .await;
        Self {
            pods: Api::namespaced(client, &ns.name),
            ns,
            operator,
        }
    }

    /// The receiver Pod that is running now, with its restart count.
    async fn running_pod(&self) -> (String, i32) {
        eventually("a running receiver Pod", BOUND, || async {
            let pods = self
                .pods
                .list(&ListParams::default().labels("app.kubernetes.io/name=hook-receiver"))
                .await
                .ok()?;
            pods.into_iter().find_map(|pod| {
                let status = pod.status?;
                let container = status.container_statuses?.into_iter().next()?;
                container.state?.running?;
                Some((pod.metadata.name?, container.restart_count))
            })
        })
        .await
    }

    /// Replaces the operator with one started with `extra_args`, as an upgrade does.
    async fn restart_operator_with(&mut self, extra_args: &[&str]) {
        self.operator.kill();
        self.operator = Operator::start_with(&[&self.ns.name], extra_args).await;
    }

    /// The host PID of the receiver container's process, as containerd reports it.
    fn container_pid(&self, pod: &str) -> u32 {
        let ids = crictl(&[
            "ps",
            "-q",
            "--state",
            "running",
            "--label",
            &format!("io.kubernetes.pod.namespace={}", self.ns.name),
            "--label",
            &format!("io.kubernetes.pod.name={pod}"),
            "--name",
            "hook-receiver",
        ]);
        let id = ids
            .lines()
            .next()
            .expect("a running hook-receiver container");
        let inspect: serde_json::Value =
            serde_json::from_str(&crictl(&["inspect", "-o", "json", id])).unwrap();
        inspect["info"]["pid"]
            .as_u64()
            .expect("the container's pid") as u32
    }
}

/// crictl against the node's containerd (`CONTAINER_RUNTIME_ENDPOINT`, from `stack.sh env`).
fn crictl(args: &[&str]) -> String {
    let output = Command::new("crictl")
        .args(args)
        .output()
        .expect("crictl runs (the stack's bin directory is on PATH)");
    assert!(
        output.status.success(),
        "crictl {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

/// Writes `path` as user and group 65532 (the receiver's own identity); the error text
/// when the write is refused.
fn write_as_receiver_user(path: &str) -> Result<(), String> {
    let output = Command::new("setpriv")
        .args(["--reuid=65532", "--regid=65532", "--clear-groups", "--"])
        .args(["sh", "-c", "echo probe > \"$1\"", "sh", path])
        .output()
        .expect("setpriv runs");
    if output.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&output.stderr).into_owned())
    }
}

#[tokio::test]
async fn the_receiver_runs_as_65532_and_writes_only_to_its_spool() {
    let receiver = Receiver::start("node-sec").await;
    let (pod, _) = receiver.running_pod().await;
    let pid = receiver.container_pid(&pod);

    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let ids = |field: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(field))
            .unwrap()
            .split_whitespace()
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    assert_eq!(ids("Uid:"), ["65532"; 4], "{status}");
    assert_eq!(ids("Gid:"), ["65532"; 4], "{status}");
    let capabilities = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .unwrap()
        .trim();
    assert_eq!(capabilities, "0000000000000000", "no capabilities left");

    let root = format!("/proc/{pid}/root");
    let refused = write_as_receiver_user(&format!("{root}/usr/local/bin/planted"))
        .expect_err("the root filesystem is read-only");
    assert!(refused.contains("Read-only file system"), "{refused}");
    let refused = write_as_receiver_user(&format!("{root}/tmp-planted"))
        .expect_err("the root filesystem is read-only");
    assert!(refused.contains("Read-only file system"), "{refused}");
    write_as_receiver_user(&format!("{root}/var/spool/hook-receiver/probe"))
        .expect("the spool volume is writable by the receiver");
}

#[tokio::test]
async fn a_wedged_receiver_is_restarted_by_its_liveness_probe() {
    let receiver = Receiver::start("node-live").await;
    let (pod, restarts) = receiver.running_pod().await;
    let pid = receiver.container_pid(&pod);

    // A process that no longer runs answers no probe: SIGSTOP wedges it as a deadlock would.
    let stopped = Command::new("kill")
        .args(["-STOP", &pid.to_string()])
        .status()
        .unwrap();
    assert!(stopped.success());

    // Three failed probes 10 s apart, then the grace period the stopped process cannot use.
    let bound = Duration::from_secs(150);
    eventually(
        "the kubelet to restart the wedged receiver",
        bound,
        || async {
            let pod = receiver.pods.get(&pod).await.ok()?;
            let container = pod.status?.container_statuses?.into_iter().next()?;
            (container.restart_count > restarts && container.state?.running.is_some()).then_some(())
        },
    )
    .await;
    assert_ne!(
        receiver.container_pid(&pod),
        pid,
        "a new process serves the Pod"
    );
}

#[tokio::test]
async fn a_new_workload_image_rolls_the_receivers_onto_it() {
    let mut receiver = Receiver::start("node-roll").await;
    let (old_pod, _) = receiver.running_pod().await;
    // A StatefulSet's replacement keeps the name: Pods are told apart by uid.
    let old_uid = receiver.pods.get(&old_pod).await.unwrap().metadata.uid;
    // The same image by its digest alone: a new reference, as an upgrade's new tag is.
    let image = support::workload_image();
    let (name, digest) = image
        .split_once('@')
        .expect("e2e/stack.sh env names the image with its digest");
    let repository = name.rsplit_once(':').map_or(name, |(r, _)| r);
    let by_digest = format!("{repository}@{digest}");
    receiver
        .restart_operator_with(&["--workload-image", &by_digest])
        .await;

    let new_pod = eventually(
        "a Ready receiver Pod running the new reference",
        BOUND,
        || async {
            let pods = receiver
                .pods
                .list(&ListParams::default().labels("app.kubernetes.io/name=hook-receiver"))
                .await
                .ok()?;
            pods.into_iter().find_map(|pod| {
                let image = pod.spec.as_ref()?.containers.first()?.image.clone()?;
                let ready = pod
                    .status
                    .as_ref()?
                    .conditions
                    .iter()
                    .flatten()
                    .any(|c| c.type_ == "Ready" && c.status == "True");
                (ready && image == by_digest && pod.metadata.deletion_timestamp.is_none())
                    .then_some(pod.metadata.uid)
            })
        },
    )
    .await;
    assert_ne!(new_pod, old_uid);
    eventually("the old receiver Pod to be gone", BOUND, || async {
        let pods = receiver
            .pods
            .list(&ListParams::default().labels("app.kubernetes.io/name=hook-receiver"))
            .await
            .ok()?;
        pods.iter()
            .all(|pod| pod.metadata.uid != old_uid)
            .then_some(())
    })
    .await;
}

/// Webhooks that four senders keep sending, each one after another over a new connection
/// (as webhook senders do), while the receivers roll onto a new configuration with Kafka
/// up: the preStop pause takes each stopping Pod out of the Service before it stops
/// listening, so not one request is refused or reset, and every one answered is on Kafka.
#[tokio::test]
async fn a_rollout_under_steady_load_refuses_and_resets_nothing() {
    use k8s_openapi::api::apps::v1::StatefulSet;
    use kube::api::{Patch, PatchParams};
    let stack = Stack::from_env().unwrap();
    let client = stack.kube_client().await;
    let ns = TestNamespace::create(&client, "node-load-roll").await;
    let _operator = Operator::start(&[&ns.name]).await;
    let topic = support::ready_event_topic(&client, &ns.name, "hooks", "load-roll", 3).await;
    let ingresses: Api<WebhookIngress> = Api::namespaced(client.clone(), &ns.name);
    ingresses
        .create(
            &PostParams::default(),
            &serde_json::from_value(support::spooling_ingress("hooks", 2, "hooks")).unwrap(),
        )
        .await
        .unwrap();
    let sets: Api<StatefulSet> = Api::namespaced(client.clone(), &ns.name);
    eventually("two ready receivers", BOUND, || {
        support::rolled(&sets, "hooks-receiver", 2)
    })
    .await;
    let url = support::service_url(&client, &ns.name, "hooks-receiver").await;
    // kube-proxy programs a new Service's address a moment after its endpoints are ready.
    let probe = reqwest::Client::new();
    eventually("the Service to route webhooks", BOUND, || async {
        let answer = probe
            .post(&url)
            .header("content-type", "application/json")
            .header("x-delivery", "probe")
            .body(r#"{"id": "probe"}"#)
            .send()
            .await
            .ok()?;
        answer.status().is_success().then_some(())
    })
    .await;

    let rolling = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let senders: Vec<_> = (0..4)
        .map(|sender| {
            let mut webhooks = support::Webhooks::new(url.clone());
            let rolling = rolling.clone();
            tokio::spawn(async move {
                let mut round = 0;
                while rolling.load(std::sync::atomic::Ordering::Relaxed) {
                    webhooks.send(&format!("{sender}-{round}"), 10).await;
                    round += 1;
                }
                webhooks
            })
        })
        .collect();
    // Let the load settle, then change the configuration: a new template, a rollout.
    tokio::time::sleep(Duration::from_secs(3)).await;
    ingresses
        .patch(
            "hooks",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"routes": [{
                "name": "hooks", "path": "/hooks", "topic": "hooks", "auth": {"none": {}},
                "eventType": {"value": "com.example.rolled"},
                "correlationId": {"header": "x-delivery"},
            }]}})),
        )
        .await
        .unwrap();
    eventually("the rollout to start", BOUND, || async {
        let status = sets.get("hooks-receiver").await.ok()?.status?;
        (status.update_revision != status.current_revision).then_some(())
    })
    .await;
    eventually("the rollout to finish", Duration::from_secs(180), || {
        support::rolled(&sets, "hooks-receiver", 2)
    })
    .await;
    // A moment on the new Pods alone, then stop.
    tokio::time::sleep(Duration::from_secs(3)).await;
    rolling.store(false, std::sync::atomic::Ordering::Relaxed);
    let (mut sent, mut acknowledged, mut failed) = (0, Vec::new(), Vec::new());
    for sender in senders {
        let webhooks = sender.await.unwrap();
        sent += webhooks.sent();
        acknowledged.extend(webhooks.acknowledged);
        failed.extend(webhooks.failed);
    }
    let result = support::delivered(&topic, &acknowledged, Duration::from_secs(120)).await;
    eprintln!(
        "sent {sent}, acknowledged {}, on Kafka {}, duplicates {}, refused or reset {}",
        acknowledged.len(),
        result.on_kafka,
        result.duplicates,
        failed.len(),
    );
    assert!(
        failed.is_empty(),
        "{} webhooks refused or reset during the rollout, among them {:?}",
        failed.len(),
        &failed[..failed.len().min(20)]
    );
    assert!(
        result.missing.is_empty(),
        "{} acknowledged webhooks never reached Kafka, among them {:?}",
        result.missing.len(),
        &result.missing[..result.missing.len().min(20)]
    );
}
