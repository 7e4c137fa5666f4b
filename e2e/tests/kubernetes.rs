//! The local control plane is a real one: version, storage, controllers, scheduling onto
//! kwok nodes (for scale tests, tainted) and the real node, garbage collection, CEL and
//! Pod Security admission, RBAC and dynamic volumes all behave as in a cluster.

use std::time::Duration;

use bridge_e2e::{
    Stack, StackKind, TestNamespace, busybox_image, crd_established, eventually,
    pinned_kubernetes_version, unique_name,
};
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::authentication::v1::TokenRequest;
use k8s_openapi::api::core::v1::{
    ConfigMap, PersistentVolume, PersistentVolumeClaim, Pod, Secret, ServiceAccount,
};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{
    ApiResource, DeleteParams, DynamicObject, GroupVersionKind, ListParams, LogParams, PostParams,
};
use kube::{Api, Client};
use serde_json::json;

const BOUND: Duration = Duration::from_secs(60);

async fn client() -> Client {
    Stack::from_env().unwrap().kube_client().await
}

/// Typed access to a test namespace's objects.
fn api<K>(ns: &TestNamespace, client: &Client) -> Api<K>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
    <K as kube::Resource>::DynamicType: Default,
{
    Api::namespaced(client.clone(), &ns.name)
}

fn api_error_code(result: Result<impl std::fmt::Debug, kube::Error>) -> (u16, String) {
    match result {
        Err(kube::Error::Api(status)) => (status.code, status.message),
        other => panic!("expected an API error, got {other:?}"),
    }
}

#[tokio::test]
async fn api_server_reports_the_pinned_kubernetes_version() {
    let stack = Stack::from_env().unwrap();
    let info = stack.kube_client().await.apiserver_version().await.unwrap();
    if stack.kind == StackKind::External {
        eprintln!(
            "external cluster reports {}; pinned version not checked",
            info.git_version
        );
        return;
    }
    let pinned = pinned_kubernetes_version().unwrap();
    assert_eq!(info.git_version, pinned);
    assert_eq!(
        format!("v{}.{}", info.major, info.minor),
        pinned.rsplit_once('.').unwrap().0
    );
}

#[tokio::test]
async fn namespace_and_configmap_are_stored_and_read_back() {
    let client = client().await;
    let ns = TestNamespace::create(&client, "e2e-cm").await;
    let cm: ConfigMap = serde_json::from_value(json!({
        "metadata": {"name": "settings"},
        "data": {"retention": "30d"}
    }))
    .unwrap();
    api::<ConfigMap>(&ns, &client)
        .create(&PostParams::default(), &cm)
        .await
        .unwrap();
    let read = api::<ConfigMap>(&ns, &client)
        .get("settings")
        .await
        .unwrap();
    assert_eq!(read.data.unwrap()["retention"], "30d");
}

#[tokio::test]
async fn deployment_pods_that_tolerate_kwok_run_on_kwok_nodes_and_are_garbage_collected() {
    let client = client().await;
    let ns = TestNamespace::create(&client, "e2e-deploy").await;
    let deployment: Deployment = serde_json::from_value(json!({
        "metadata": {"name": "web"},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {
                    "containers": [{"name": "web", "image": "omninode/placeholder:1"}],
                    "nodeSelector": {"type": "kwok"},
                    "tolerations": [{"key": "kwok.x-k8s.io/node", "operator": "Exists", "effect": "NoSchedule"}],
                }
            }
        }
    }))
    .unwrap();
    let deployments = api::<Deployment>(&ns, &client);
    deployments
        .create(&PostParams::default(), &deployment)
        .await
        .unwrap();

    eventually("2 ready replicas", BOUND, || async {
        let d = deployments.get("web").await.ok()?;
        (d.status?.ready_replicas? == 2).then_some(())
    })
    .await;
    let pods = api::<Pod>(&ns, &client)
        .list(&ListParams::default())
        .await
        .unwrap();
    assert_eq!(pods.items.len(), 2);
    for pod in &pods.items {
        let node = pod.spec.as_ref().unwrap().node_name.clone().unwrap();
        assert!(node.starts_with("kwok-node-"), "scheduled to {node}");
        let ip = pod.status.as_ref().unwrap().pod_ip.clone().unwrap();
        assert!(ip.starts_with("127."), "pod IP {ip} is outside loopback");
    }

    deployments
        .delete("web", &DeleteParams::background())
        .await
        .unwrap();
    let replica_sets = api::<ReplicaSet>(&ns, &client);
    let pod_api = api::<Pod>(&ns, &client);
    eventually("ReplicaSets and Pods garbage-collected", BOUND, || async {
        let rs = replica_sets.list(&ListParams::default()).await.ok()?;
        let pods = pod_api.list(&ListParams::default()).await.ok()?;
        (rs.items.is_empty() && pods.items.is_empty()).then_some(())
    })
    .await;
}

#[tokio::test]
async fn crd_cel_rule_refuses_an_invalid_object_with_its_message() {
    let client = client().await;
    let group = "e2e.omninode.io";
    // A plural of the test's own, so runs against one cluster never share a CRD.
    let plural = unique_name("widgets").replace('-', "");
    let crd: CustomResourceDefinition = serde_json::from_value(json!({
        "metadata": {"name": format!("{plural}.{group}")},
        "spec": {
            "group": group,
            "scope": "Namespaced",
            "names": {"plural": plural, "singular": format!("{plural}s"), "kind": "Widget", "listKind": "WidgetList"},
            "versions": [{
                "name": "v1", "served": true, "storage": true,
                "schema": {"openAPIV3Schema": {
                    "type": "object",
                    "properties": {"spec": {
                        "type": "object",
                        "properties": {
                            "minReplicas": {"type": "integer"},
                            "maxReplicas": {"type": "integer"}
                        },
                        "x-kubernetes-validations": [{
                            "rule": "self.minReplicas <= self.maxReplicas",
                            "message": "minReplicas must not exceed maxReplicas"
                        }]
                    }}
                }}
            }]
        }
    }))
    .unwrap();
    let crds = Api::<CustomResourceDefinition>::all(client.clone());
    crds.create(&PostParams::default(), &crd).await.unwrap();
    let name = crd.metadata.name.clone().unwrap();
    crd_established(&client, &name).await;

    let resource =
        ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, "v1", "Widget"), &plural);
    let widgets = Api::<DynamicObject>::namespaced_with(client.clone(), "default", &resource);
    let widget = |name: &str, min: i64, max: i64| {
        DynamicObject::new(name, &resource)
            .data(json!({"spec": {"minReplicas": min, "maxReplicas": max}}))
    };
    // Discovery of a new CRD takes a moment; the valid object is accepted once it is served.
    eventually("a valid Widget to be accepted", BOUND, || async {
        widgets
            .create(&PostParams::default(), &widget("valid", 1, 3))
            .await
            .ok()
    })
    .await;
    let (code, message) = api_error_code(
        widgets
            .create(&PostParams::default(), &widget("invalid", 5, 2))
            .await,
    );
    assert_eq!(code, 422);
    assert!(
        message.contains("minReplicas must not exceed maxReplicas"),
        "{message}"
    );

    crds.delete(&name, &DeleteParams::default()).await.unwrap();
}

#[tokio::test]
async fn rbac_refuses_a_service_account_without_rights() {
    let client = client().await;
    let ns = TestNamespace::create(&client, "e2e-rbac").await;
    let sa: ServiceAccount =
        serde_json::from_value(json!({"metadata": {"name": "reader"}})).unwrap();
    api::<ServiceAccount>(&ns, &client)
        .create(&PostParams::default(), &sa)
        .await
        .unwrap();
    let request: TokenRequest = serde_json::from_value(json!({
        "spec": {"audiences": [], "expirationSeconds": 600}
    }))
    .unwrap();
    let token = api::<ServiceAccount>(&ns, &client)
        .create_token_request("reader", &PostParams::default(), &request)
        .await
        .unwrap()
        .status
        .unwrap()
        .token;
    let mut config = kube::Config::infer().await.unwrap();
    config.auth_info = kube::config::AuthInfo {
        token: Some(token.expect("the token request returns a token").into()),
        ..Default::default()
    };
    let as_reader = Client::try_from(config).unwrap();
    let reader_configmaps = Api::<ConfigMap>::namespaced(as_reader.clone(), &ns.name);
    let reader_secrets = Api::<Secret>::namespaced(as_reader.clone(), &ns.name);

    let (code, _) = api_error_code(reader_configmaps.list(&ListParams::default()).await);
    assert_eq!(code, 403, "a ServiceAccount with no role may not list");

    // Granting exactly one verb on one kind lets that through and nothing else.
    let role: Role = serde_json::from_value(json!({
        "metadata": {"name": "configmap-reader"},
        "rules": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["list"]}]
    }))
    .unwrap();
    let binding: RoleBinding = serde_json::from_value(json!({
        "metadata": {"name": "configmap-reader"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "configmap-reader"},
        "subjects": [{"kind": "ServiceAccount", "name": "reader", "namespace": ns.name}]
    }))
    .unwrap();
    api::<Role>(&ns, &client)
        .create(&PostParams::default(), &role)
        .await
        .unwrap();
    api::<RoleBinding>(&ns, &client)
        .create(&PostParams::default(), &binding)
        .await
        .unwrap();
    eventually("the granted list to be allowed", BOUND, || async {
        reader_configmaps.list(&ListParams::default()).await.ok()
    })
    .await;
    let (code, _) = api_error_code(reader_secrets.list(&ListParams::default()).await);
    assert_eq!(code, 403, "the role grants configmaps only");
}

#[tokio::test]
async fn a_pod_with_no_toleration_is_never_scheduled_to_a_kwok_node() {
    let client = client().await;
    let ns = TestNamespace::create(&client, "e2e-taint").await;
    // Only kwok nodes match the selector, and they are tainted: the Pod stays Pending.
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "untolerated"},
        "spec": {
            "containers": [{"name": "c", "image": "omninode/placeholder:1"}],
            "nodeSelector": {"type": "kwok"},
        }
    }))
    .unwrap();
    let pods = api::<Pod>(&ns, &client);
    pods.create(&PostParams::default(), &pod).await.unwrap();
    let message = eventually("the scheduler to report the taint", BOUND, || async {
        let status = pods.get("untolerated").await.ok()?.status?;
        let scheduled = status
            .conditions?
            .into_iter()
            .find(|c| c.type_ == "PodScheduled")?;
        (scheduled.status == "False").then_some(scheduled.message.unwrap_or_default())
    })
    .await;
    assert!(message.contains("untolerated taint"), "{message}");
}

#[tokio::test]
async fn a_pod_that_breaks_the_restricted_level_is_refused_in_a_restricted_namespace() {
    let client = client().await;
    let ns = TestNamespace::create(&client, "e2e-psa").await;
    let namespaces = Api::<k8s_openapi::api::core::v1::Namespace>::all(client.clone());
    let label =
        json!({"metadata": {"labels": {"pod-security.kubernetes.io/enforce": "restricted"}}});
    namespaces
        .patch(
            &ns.name,
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(&label),
        )
        .await
        .unwrap();
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "privileged"},
        "spec": {"containers": [{
            "name": "c", "image": "omninode/placeholder:1",
            "securityContext": {"privileged": true},
        }]}
    }))
    .unwrap();
    let (code, message) = api_error_code(
        api::<Pod>(&ns, &client)
            .create(&PostParams::default(), &pod)
            .await,
    );
    assert_eq!(code, 403, "{message}");
    assert!(
        message.contains("violates PodSecurity \"restricted:latest\"")
            && message.contains("privileged"),
        "{message}"
    );
}

/// A Pod of `image` that runs `script` in `sh` once, as uid 65532 under the restricted
/// Pod Security level, with the claim `claim` at /data.
fn pod_with_claim(name: &str, image: &str, claim: &str, script: &str) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {
            "restartPolicy": "Never",
            "securityContext": {
                "runAsUser": 65532, "runAsGroup": 65532, "runAsNonRoot": true,
                "seccompProfile": {"type": "RuntimeDefault"},
            },
            "containers": [{
                "name": "c", "image": image, "command": ["sh", "-c", script],
                "securityContext": {
                    "readOnlyRootFilesystem": true, "allowPrivilegeEscalation": false,
                    "capabilities": {"drop": ["ALL"]},
                },
                "volumeMounts": [{"name": "data", "mountPath": "/data"}],
            }],
            "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": claim}}],
        }
    }))
    .unwrap()
}

/// Waits until the Pod `name` has run to its end; panics with its status if it failed.
async fn pod_succeeds(pods: &Api<Pod>, name: &str) -> Pod {
    eventually(&format!("Pod {name} to succeed"), BOUND, || async {
        let pod = pods.get(name).await.ok()?;
        match pod.status.as_ref()?.phase.as_deref()? {
            "Succeeded" => Some(pod),
            "Failed" => panic!("Pod {name} failed: {:?}", pod.status),
            _ => None,
        }
    })
    .await
}

#[tokio::test]
async fn a_claim_of_the_default_storage_class_keeps_what_uid_65532_wrote_across_pods() {
    let client = client().await;
    let image = busybox_image().unwrap();
    let ns = TestNamespace::create(&client, "e2e-volume").await;
    // No storageClassName: the default StorageClass's provisioner serves it.
    let claim: PersistentVolumeClaim = serde_json::from_value(json!({
        "metadata": {"name": "data"},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "16Mi"}}}
    }))
    .unwrap();
    let claims = api::<PersistentVolumeClaim>(&ns, &client);
    claims.create(&PostParams::default(), &claim).await.unwrap();
    let pods = api::<Pod>(&ns, &client);
    let writer = pod_with_claim(
        "writer",
        &image,
        "data",
        "set -e; echo 'written by 65532' > /data/greeting",
    );
    pods.create(&PostParams::default(), &writer).await.unwrap();

    let written = pod_succeeds(&pods, "writer").await;
    let node = written.spec.unwrap().node_name.unwrap();
    assert!(!node.starts_with("kwok-node-"), "ran on {node}");
    let bound = claims.get("data").await.unwrap();
    assert_eq!(
        bound.spec.as_ref().unwrap().storage_class_name.as_deref(),
        Some("local-path")
    );
    assert_eq!(bound.status.unwrap().phase.as_deref(), Some("Bound"));

    // A new Pod on the same claim finds what the first one wrote.
    pods.delete("writer", &DeleteParams::default())
        .await
        .unwrap();
    let reader = pod_with_claim("reader", &image, "data", "cat /data/greeting");
    pods.create(&PostParams::default(), &reader).await.unwrap();
    pod_succeeds(&pods, "reader").await;
    let read = pods.logs("reader", &LogParams::default()).await.unwrap();
    assert_eq!(read, "written by 65532\n");

    // The volume goes with its claim (reclaimPolicy Delete).
    let volume = bound.spec.unwrap().volume_name.unwrap();
    pods.delete("reader", &DeleteParams::default())
        .await
        .unwrap();
    claims
        .delete("data", &DeleteParams::default())
        .await
        .unwrap();
    let volumes = Api::<PersistentVolume>::all(client.clone());
    eventually(
        &format!("PersistentVolume {volume} to be deleted"),
        BOUND,
        || async { volumes.get_opt(&volume).await.ok()?.is_none().then_some(()) },
    )
    .await;
}
