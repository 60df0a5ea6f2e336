{{/*
Names and labels, in one place (the style of cert-manager's chart).
*/}}

{{/* The chart name part of resource names. */}}
{{- define "yolo-v7.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The full name: <release>-<chart>, or <release> when it already contains the chart name. */}}
{{- define "yolo-v7.fullname" -}}
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

{{/* chart label: name-version */}}
{{- define "yolo-v7.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Selector labels (never change after install: they are immutable in a Deployment). */}}
{{- define "yolo-v7.selectorLabels" -}}
app.kubernetes.io/name: {{ include "yolo-v7.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end }}

{{/* Labels on every object the chart renders, without the component. */}}
{{- define "yolo-v7.commonLabels" -}}
helm.sh/chart: {{ include "yolo-v7.chart" . }}
app.kubernetes.io/name: {{ include "yolo-v7.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: yolo-v7
{{- end }}

{{/* Labels of the operator's objects. */}}
{{- define "yolo-v7.labels" -}}
{{ include "yolo-v7.commonLabels" . }}
app.kubernetes.io/component: operator
{{- end }}

{{/* The operator's ServiceAccount name. */}}
{{- define "yolo-v7.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "yolo-v7.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* repository:tag or repository@digest; the tag defaults to the chart's appVersion. Call with (dict "image" .Values.image "root" .) */}}
{{- define "yolo-v7.imageRef" -}}
{{- if .image.digest }}
{{- printf "%s@%s" .image.repository .image.digest }}
{{- else }}
{{- printf "%s:%s" .image.repository (default .root.Chart.AppVersion .image.tag) }}
{{- end }}
{{- end }}

{{/* The namespaces the operator watches when not cluster-wide (default: the release namespace), as a list. */}}
{{- define "yolo-v7.watchNamespaces" -}}
{{- if .Values.watch.namespaces }}
{{- toJson (uniq .Values.watch.namespaces) }}
{{- else }}
{{- toJson (list .Release.Namespace) }}
{{- end }}
{{- end }}

{{/*
Pod-level securityContext: OpenShift restricted-v2 and Pod Security "restricted" alike. No runAsUser,
runAsGroup or fsGroup: OpenShift assigns them from the namespace's range; the image's USER is numeric
(1001) so that runAsNonRoot is verifiable elsewhere.
*/}}
{{- define "yolo-v7.podSecurityContext" -}}
runAsNonRoot: true
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/* Container-level securityContext (same reasoning). */}}
{{- define "yolo-v7.containerSecurityContext" -}}
runAsNonRoot: true
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop:
    - ALL
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/*
The operator's rules on namespaced objects: the same list for the cluster-wide ClusterRole and for each
watched namespace's Role. Least privilege: no secrets, no pods, no deployments; nothing is deleted (an
InferenceService goes with its YoloDetector through its ownerReference and the garbage collector).
*/}}
{{- define "yolo-v7.namespacedRules" -}}
# YoloDetectors: kopf watches them and keeps its bookkeeping in annotations and finalizers (patch).
- apiGroups: ["detection.yolo-v7.io"]
  resources: ["yolodetectors"]
  verbs: ["get", "list", "watch", "patch"]
- apiGroups: ["detection.yolo-v7.io"]
  resources: ["yolodetectors/status"]
  verbs: ["get", "patch"]
# An ownerReference with blockOwnerDeletion (kopf.adopt) needs this where OwnerReferencesPermissionEnforcement
# is on (OpenShift).
- apiGroups: ["detection.yolo-v7.io"]
  resources: ["yolodetectors/finalizers"]
  verbs: ["update"]
# The InferenceServices it creates and keeps in line (read for their Ready condition and URL).
- apiGroups: ["serving.kserve.io"]
  resources: ["inferenceservices"]
  verbs: ["get", "list", "watch", "create", "patch"]
- apiGroups: ["serving.kserve.io"]
  resources: ["inferenceservices/status"]
  verbs: ["get"]
# kopf posts events about handler progress and errors; the operator reads KServe's Warning events about its
# InferenceServices into the detector's Ready message.
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create", "patch", "list"]
- apiGroups: ["events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]
# What it makes beside each InferenceService, owned by the detector: a PodDisruptionBudget (replicas.min >= 2), a
# NetworkPolicy (spec.access) and a PodMonitor (where monitoring.coreos.com is served). Read, created, patched,
# deleted by name: no list or watch.
- apiGroups: ["policy"]
  resources: ["poddisruptionbudgets"]
  verbs: ["get", "create", "patch", "delete"]
- apiGroups: ["networking.k8s.io"]
  resources: ["networkpolicies"]
  verbs: ["get", "create", "patch", "delete"]
- apiGroups: ["monitoring.coreos.com"]
  resources: ["podmonitors"]
  verbs: ["get", "create", "patch", "delete"]
{{- end }}

{{/*
Cluster-scoped, read-only rules kopf uses to discover resources at runtime: CRDs (it notices the
YoloDetector or InferenceService CRD appearing later) and, when watching a list of namespaces,
namespaces (it notices one being created after the operator). Without them kopf falls back to a
startup-time view and logs a warning.
*/}}
{{- define "yolo-v7.discoveryRules" -}}
- apiGroups: ["apiextensions.k8s.io"]
  resources: ["customresourcedefinitions"]
  verbs: ["list", "watch"]
{{- if not .Values.watch.clusterWide }}
- apiGroups: [""]
  resources: ["namespaces"]
  verbs: ["list", "watch"]
{{- end }}
{{- end }}
