//! pod-runner (started by `e2e/stack.sh up`) runs the operator's Pods on kwok nodes as real
//! processes: configured from the objects in the cluster, on their own loopback Pod IPs,
//! reached through the Service's EndpointSlices, ready only when their probe says so.
//! The workload is `echo-server` (this crate), labelled as the operator labels its own.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::time::Duration;

use bridge_e2e::{Stack, StackKind, TestNamespace, eventually, loopback_twin};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::events::v1::Event;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde_json::{Value, json};

const BOUND: Duration = Duration::from_secs(90);
const SECRET_TOKEN: &str = "s3cret-from-the-secret";

/// The local stack's pod-runner, or None (with a note) on an external cluster, which has
/// no pod-runner.
async fn client() -> Option<Client> {
    let stack = Stack::from_env().unwrap();
    if stack.kind == StackKind::External {
        eprintln!("external cluster: no pod-runner; skipped");
        return None;
    }
    Some(stack.kube_client().await)
}

/// The range `e2e/stack.sh env` says pod-runner hands out (198.18.0.0/20 at offset 0).
fn pod_range() -> (Ipv4Addr, u32) {
    let cidr = std::env::var("OMNINODE_POD_CIDR").unwrap_or_else(|_| "198.18.0.0/20".into());
    let (addr, prefix) = cidr.split_once('/').expect("a CIDR");
    (addr.parse().unwrap(), prefix.parse().unwrap())
}

fn assert_in_pod_range(ip: &str) {
    let ip: Ipv4Addr = ip.parse().unwrap_or_else(|_| panic!("{ip} is not IPv4"));
    let (base, prefix) = pod_range();
    let mask = u32::MAX << (32 - prefix);
    assert_eq!(
        u32::from(ip) & mask,
        u32::from(base) & mask,
        "{ip} is outside pod-runner's range {base}/{prefix}"
    );
    assert!(
        !ip.is_private() && !ip.is_loopback(),
        "{ip}: pod traffic must neither leave the machine nor use loopback, which EndpointSlices refuse"
    );
}

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(2))
        .build()
        .unwrap()
}

/// What the process of the Pod IP `ip` saw, or None when nothing answers there. Like
/// every client here, it connects to the IP's loopback twin.
async fn info(ip: &str) -> Option<Value> {
    let twin = loopback_twin(ip.parse().expect("an IPv4 pod IP"));
    let response = http()
        .get(format!("http://{twin}:8080/info"))
        .send()
        .await
        .ok()?;
    response.json().await.ok()
}

async fn answers(ip: &str) -> bool {
    info(ip).await.is_some()
}

/// The addresses of ready endpoints in the Service's EndpointSlices.
async fn ready_endpoints(client: &Client, ns: &str, service: &str) -> BTreeSet<String> {
    let slices = Api::<EndpointSlice>::namespaced(client.clone(), ns)
        .list(&ListParams::default().labels(&format!("kubernetes.io/service-name={service}")))
        .await
        .unwrap();
    slices
        .items
        .iter()
        .flat_map(|s| s.endpoints.iter().flatten())
        .filter(|e| e.conditions.as_ref().and_then(|c| c.ready) == Some(true))
        .flat_map(|e| e.addresses.iter().cloned())
        .collect()
}

/// Waits until exactly `n` ready endpoints are listed and every one of them answers.
async fn answering_endpoints(client: &Client, ns: &str, n: usize) -> BTreeSet<String> {
    eventually(
        &format!("{n} ready endpoints that answer"),
        BOUND,
        || async {
            let ips = ready_endpoints(client, ns, "echo").await;
            if ips.len() != n {
                return None;
            }
            for ip in &ips {
                if !answers(ip).await {
                    return None;
                }
            }
            Some(ips)
        },
    )
    .await
}

async fn create_fixtures(client: &Client, ns: &str) {
    let cm: ConfigMap = serde_json::from_value(json!({
        "metadata": {"name": "echo"},
        "data": {"config.txt": "listen=0.0.0.0:8080\nsecret_file=/etc/echo/secret/token\ngreeting=from the configmap\n"}
    }))
    .unwrap();
    Api::<ConfigMap>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &cm)
        .await
        .unwrap();
    let secret: Secret = serde_json::from_value(json!({
        "metadata": {"name": "echo"},
        "stringData": {"token": SECRET_TOKEN}
    }))
    .unwrap();
    Api::<Secret>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &secret)
        .await
        .unwrap();
    let service: Service = serde_json::from_value(json!({
        "metadata": {"name": "echo"},
        "spec": {"selector": {"app": "echo"}, "ports": [{"name": "http", "port": 8080}]}
    }))
    .unwrap();
    Api::<Service>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &service)
        .await
        .unwrap();
}

/// An echo-server Deployment as the operator would write one: its label, a command from
/// cargo's target dir, a wildcard listen address and mount paths in the ConfigMap file.
async fn create_deployment(
    client: &Client,
    ns: &str,
    name: &str,
    replicas: i32,
    command: &str,
    readiness_path: &str,
    liveness_path: Option<&str>,
) -> Api<Deployment> {
    let labels = json!({
        "app": "echo",
        "variant": name,
        "app.kubernetes.io/managed-by": "bridge-operator",
        "app.kubernetes.io/name": "echo-server",
    });
    let deployment: Deployment = serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": "echo", "variant": name}},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "terminationGracePeriodSeconds": 5,
                    "containers": [{
                        "name": "echo",
                        "image": "omninode/echo-server:test",
                        "command": [command],
                        "args": ["--config", "/etc/echo/config/config.txt"],
                        "ports": [{"name": "http", "containerPort": 8080}],
                        "env": [
                            {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                            {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
                            {"name": "GREETING", "value": "hello $(POD_NAME)"},
                            {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "echo", "key": "token"}}},
                        ],
                        "readinessProbe": {
                            "httpGet": {"path": readiness_path, "port": "http"},
                            "periodSeconds": 1,
                            "failureThreshold": 1,
                        },
                        "volumeMounts": [
                            {"name": "config", "mountPath": "/etc/echo/config"},
                            {"name": "secret", "mountPath": "/etc/echo/secret", "readOnly": true},
                        ],
                    }],
                    "volumes": [
                        {"name": "config", "configMap": {"name": "echo"}},
                        {"name": "secret", "secret": {"secretName": "echo"}},
                    ],
                },
            },
        },
    }))
    .unwrap();
    let mut deployment = deployment;
    if let Some(path) = liveness_path {
        let probe = serde_json::from_value(json!({
            "httpGet": {"path": path, "port": 8080},
            "periodSeconds": 1,
            "failureThreshold": 2,
        }))
        .unwrap();
        let spec = deployment.spec.as_mut().unwrap();
        spec.template.spec.as_mut().unwrap().containers[0].liveness_probe = Some(probe);
    }
    let deployments = Api::<Deployment>::namespaced(client.clone(), ns);
    deployments
        .create(&PostParams::default(), &deployment)
        .await
        .unwrap();
    deployments
}

async fn scale(deployments: &Api<Deployment>, name: &str, replicas: i32) {
    deployments
        .patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": replicas}})),
        )
        .await
        .unwrap();
}

async fn ready_replicas(deployments: &Api<Deployment>, name: &str) -> i32 {
    let d = deployments.get(name).await.unwrap();
    d.status.and_then(|s| s.ready_replicas).unwrap_or(0)
}

#[tokio::test]
async fn replicas_run_as_processes_configured_from_their_objects_and_follow_scaling_and_deletion() {
    let Some(client) = client().await else {
        return;
    };
    let ns = TestNamespace::create(&client, "e2e-runner").await;
    create_fixtures(&client, &ns.name).await;
    let deployments =
        create_deployment(&client, &ns.name, "echo", 2, "echo-server", "/readyz", None).await;
    eventually("2 ready replicas", BOUND, || async {
        (ready_replicas(&deployments, "echo").await == 2).then_some(())
    })
    .await;

    let ips = answering_endpoints(&client, &ns.name, 2).await;
    let pods = Api::<Pod>::namespaced(client.clone(), &ns.name)
        .list(&ListParams::default())
        .await
        .unwrap();
    let pod_names: BTreeSet<String> = pods
        .items
        .iter()
        .filter_map(|p| p.metadata.name.clone())
        .collect();
    for ip in &ips {
        assert_in_pod_range(ip);
        let seen = info(ip).await.expect("the process answers");
        let env = &seen["env"];
        let pod_name = env["POD_NAME"].as_str().unwrap();
        assert!(
            pod_names.contains(pod_name),
            "{pod_name} is not one of {pod_names:?}"
        );
        assert_eq!(env["POD_IP"], ip.as_str(), "status.podIP");
        assert_eq!(env["TOKEN"], SECRET_TOKEN, "secretKeyRef");
        assert_eq!(
            env["GREETING"],
            format!("hello {pod_name}"),
            "$(VAR) expansion"
        );
        assert_eq!(seen["secret"], SECRET_TOKEN, "the Secret volume's file");
        let config = seen["config"].as_str().unwrap();
        assert!(config.contains("greeting=from the configmap"), "{config}");
        let twin = loopback_twin(ip.parse().unwrap());
        assert!(
            config.contains(&format!("listen={twin}:8080")),
            "wildcard bind not rewritten to the Pod IP's loopback twin: {config}"
        );
        assert!(
            !config.contains("/etc/echo"),
            "mount path not rewritten: {config}"
        );
        assert_eq!(seen["listen"], format!("{twin}:8080"));
        assert!(
            env.get("KUBECONFIG").is_none(),
            "the runner's env leaked: {env}"
        );
    }

    scale(&deployments, "echo", 3).await;
    let three = answering_endpoints(&client, &ns.name, 3).await;
    assert!(three.is_superset(&ips), "{three:?} lost one of {ips:?}");

    scale(&deployments, "echo", 1).await;
    let one = answering_endpoints(&client, &ns.name, 1).await;
    for gone in three.difference(&one) {
        eventually(
            &format!("the scaled-down process at {gone} to stop"),
            BOUND,
            || async { (!answers(gone).await).then_some(()) },
        )
        .await;
    }

    let survivor = one.iter().next().unwrap().clone();
    let pod_api = Api::<Pod>::namespaced(client.clone(), &ns.name);
    let victim = pod_api
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .find(|p| p.status.as_ref().and_then(|s| s.pod_ip.as_deref()) == Some(survivor.as_str()))
        .expect("the pod behind the last endpoint");
    pod_api
        .delete(
            victim.metadata.name.as_deref().unwrap(),
            &DeleteParams::default(),
        )
        .await
        .unwrap();
    eventually(
        &format!("the deleted pod's process at {survivor} to stop"),
        BOUND,
        || async { (!answers(&survivor).await).then_some(()) },
    )
    .await;
    let replacement = answering_endpoints(&client, &ns.name, 1).await;
    assert!(!replacement.contains(&survivor), "{replacement:?}");
    eventually("the deleted pod to be gone", BOUND, || async {
        pod_api
            .get_opt(victim.metadata.name.as_deref().unwrap())
            .await
            .unwrap()
            .is_none()
            .then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_process_failing_its_readiness_probe_runs_but_is_not_a_ready_endpoint() {
    let Some(client) = client().await else {
        return;
    };
    let ns = TestNamespace::create(&client, "e2e-runner-probe").await;
    create_fixtures(&client, &ns.name).await;
    let deployments =
        create_deployment(&client, &ns.name, "good", 1, "echo-server", "/readyz", None).await;
    create_deployment(
        &client,
        &ns.name,
        "bad",
        1,
        "echo-server",
        "/notready",
        None,
    )
    .await;

    let good = answering_endpoints(&client, &ns.name, 1).await;
    let pods = Api::<Pod>::namespaced(client.clone(), &ns.name);
    let bad_ip = eventually("the unready pod's process to answer", BOUND, || async {
        let list = pods
            .list(&ListParams::default().labels("variant=bad"))
            .await
            .ok()?;
        let pod = list.items.into_iter().next()?;
        let status = pod.status?;
        let running = status
            .container_statuses?
            .first()?
            .state
            .as_ref()?
            .running
            .is_some();
        let ip = status.pod_ip?;
        (running && answers(&ip).await).then_some(ip)
    })
    .await;
    assert_in_pod_range(&bad_ip);
    assert!(!good.contains(&bad_ip));
    // Several probe periods later it is still not ready anywhere a client would look.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(ready_endpoints(&client, &ns.name, "echo").await, good);
    assert_eq!(ready_replicas(&deployments, "bad").await, 0);
    let pod = pods
        .list(&ListParams::default().labels("variant=bad"))
        .await
        .unwrap()
        .items
        .remove(0);
    let ready = pod
        .status
        .unwrap()
        .conditions
        .unwrap()
        .into_iter()
        .find(|c| c.type_ == "Ready")
        .unwrap();
    assert_eq!(ready.status, "False");
}

#[tokio::test]
async fn a_container_whose_binary_is_missing_waits_with_a_reason_and_an_event() {
    let Some(client) = client().await else {
        return;
    };
    let ns = TestNamespace::create(&client, "e2e-runner-missing").await;
    create_fixtures(&client, &ns.name).await;
    create_deployment(
        &client,
        &ns.name,
        "missing",
        1,
        "/usr/bin/no-such-binary",
        "/readyz",
        None,
    )
    .await;
    let pods = Api::<Pod>::namespaced(client.clone(), &ns.name);
    let message = eventually(
        "the container to wait with BinaryNotFound",
        BOUND,
        || async {
            let pod = pods
                .list(&ListParams::default())
                .await
                .ok()?
                .items
                .into_iter()
                .next()?;
            let waiting = pod
                .status?
                .container_statuses?
                .first()?
                .state
                .as_ref()?
                .waiting
                .clone()?;
            (waiting.reason.as_deref() == Some("BinaryNotFound")).then_some(waiting.message?)
        },
    )
    .await;
    assert!(message.contains("no-such-binary"), "{message}");
    assert!(
        message.contains("target"),
        "the message names the bin dir: {message}"
    );
    eventually("a Warning event BinaryNotFound", BOUND, || async {
        let events = Api::<Event>::namespaced(client.clone(), &ns.name)
            .list(&ListParams::default())
            .await
            .ok()?;
        events
            .items
            .iter()
            .any(|e| {
                e.reason.as_deref() == Some("BinaryNotFound")
                    && e.type_.as_deref() == Some("Warning")
            })
            .then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_process_failing_its_liveness_probe_is_killed_and_restarted() {
    let Some(client) = client().await else {
        return;
    };
    let ns = TestNamespace::create(&client, "e2e-runner-live").await;
    create_fixtures(&client, &ns.name).await;
    create_deployment(
        &client,
        &ns.name,
        "dying",
        1,
        "echo-server",
        "/readyz",
        Some("/notready"),
    )
    .await;
    let pods = Api::<Pod>::namespaced(client.clone(), &ns.name);
    let (restarts, last_state) = eventually(
        "two restarts after failed liveness probes",
        BOUND,
        || async {
            let pod = pods
                .list(&ListParams::default())
                .await
                .ok()?
                .items
                .into_iter()
                .next()?;
            let status = pod.status?.container_statuses?.into_iter().next()?;
            (status.restart_count >= 2).then_some((status.restart_count, status.last_state?))
        },
    )
    .await;
    let terminated = last_state.terminated.expect("lastState.terminated");
    assert_eq!(
        terminated.exit_code,
        128 + 9,
        "killed by SIGKILL after {restarts} restarts"
    );
}
