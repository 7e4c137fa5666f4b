{{/* Names and labels shared by every template. */}}

{{- define "bridge.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* <release>-omninode-bridge, or the release name when it already says omninode-bridge. */}}
{{- define "bridge.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* Cluster-scoped objects carry the namespace too: two releases in two namespaces must not collide. */}}
{{- define "bridge.clusterName" -}}
{{- printf "%s-%s" .Release.Namespace (include "bridge.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "bridge.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "bridge.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name: name an existing ServiceAccount when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "bridge.selectorLabels" -}}
app.kubernetes.io/name: {{ include "bridge.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end }}

{{- define "bridge.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "bridge.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: omninode-bridge
{{- end }}

{{/* Labels of objects that are not the operator's own (topics, dashboards). */}}
{{- define "bridge.commonLabels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: omninode-bridge
{{- end }}

{{- define "bridge.image" -}}
{{- $tag := default .Chart.AppVersion .Values.image.tag }}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository $tag }}
{{- end }}
{{- end }}

{{- define "bridge.operatorWave" -}}
argocd.argoproj.io/sync-wave: {{ .Values.argocd.syncWaves.operator | quote }}
{{- end }}

{{/* Where the Kafka properties Secret is mounted. */}}
{{- define "bridge.kafkaPropertiesDir" -}}
/etc/bridge-operator/kafka
{{- end }}

{{/* The operator's rules on the objects it reconciles, in a ClusterRole or in one Role per watched namespace. Takes a dict: kinds (plural names), workloads (bool). */}}
{{- define "bridge.objectRules" -}}
# Watch the custom resources, patch them (the finalizer of deletionPolicy: Delete) and
# their status; the finalizers subresource lets it set and remove that finalizer.
- apiGroups: ["bridge.omninode.io"]
  resources: {{ toJson .kinds }}
  verbs: ["get", "list", "watch", "patch", "update"]
- apiGroups: ["bridge.omninode.io"]
  resources:
    {{- range .kinds }}
    - {{ . }}/status
    {{- end }}
  verbs: ["patch", "update"]
- apiGroups: ["bridge.omninode.io"]
  resources:
    {{- range .kinds }}
    - {{ . }}/finalizers
    {{- end }}
  verbs: ["update"]
# Events on the objects it reconciles (a topic re-created, a config restored).
- apiGroups: ["events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]
# The workloads of EventConsumer and WebhookIngress: owned, applied server-side, orphans
# deleted.
- apiGroups: ["apps"]
  resources: ["deployments", "statefulsets"]
  verbs: ["get", "list", "watch", "create", "update", "patch", "delete"]
# The Jobs that drain the spool claims of receivers scaled away or deleted.
- apiGroups: ["batch"]
  resources: ["jobs"]
  verbs: ["get", "list", "watch", "create", "update", "patch", "delete"]
- apiGroups: [""]
  resources: ["services", "configmaps"]
  verbs: ["get", "list", "watch", "create", "update", "patch", "delete"]
- apiGroups: ["policy"]
  resources: ["poddisruptionbudgets"]
  verbs: ["get", "list", "watch", "create", "update", "patch", "delete"]
# Only to tell a user that a Secret named in a route's auth does not exist; the workload
# pods mount it, the operator never reads its data through a list or watch.
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["get"]
# The receivers' spool claims (made by their StatefulSet): listed to find the claims of
# replicas gone, and deleted only after a drain Job found one empty.
- apiGroups: [""]
  resources: ["persistentvolumeclaims"]
  verbs: ["list", "delete"]
# A replay waits until no Pod of the consumer runs before it moves the group's offsets; a
# spool claim is drained only once its replica's Pod is gone.
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["list"]
# A WebhookIngress with `expose`: an Ingress, or a Gateway API HTTPRoute when those CRDs
# are installed.
- apiGroups: ["networking.k8s.io"]
  resources: ["ingresses"]
  verbs: ["get", "list", "watch", "create", "update", "patch", "delete"]
- apiGroups: ["gateway.networking.k8s.io"]
  resources: ["httproutes"]
  verbs: ["get", "list", "watch", "create", "update", "patch", "delete"]
{{- end }}
