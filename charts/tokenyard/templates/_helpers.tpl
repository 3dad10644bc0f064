{{/* Names, labels and shared snippets of the tokenyard chart. */}}

{{- define "tokenyard.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 40 | trimSuffix "-" -}}
{{- end -}}

{{/* Prefix of every resource name; short enough for the -autoscaler suffixes. */}}
{{- define "tokenyard.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 52 | trimSuffix "-" -}}
{{- else if contains (include "tokenyard.name" .) .Release.Name -}}
{{- .Release.Name | trunc 52 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name (include "tokenyard.name" .) | trunc 52 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "tokenyard.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "tokenyard.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: tokenyard
{{- end -}}

{{/* Selector labels of one component (operator or autoscaler): pass (list $ "operator"). */}}
{{- define "tokenyard.selectorLabels" -}}
{{- $root := index . 0 -}}
app.kubernetes.io/name: {{ include "tokenyard.name" $root }}
app.kubernetes.io/instance: {{ $root.Release.Name }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end -}}

{{- define "tokenyard.operatorName" -}}
{{- printf "%s-operator" (include "tokenyard.fullname" .) -}}
{{- end -}}

{{- define "tokenyard.autoscalerName" -}}
{{- printf "%s-autoscaler" (include "tokenyard.fullname" .) -}}
{{- end -}}

{{- define "tokenyard.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{/* Comma-separated namespaces, as TOKENYARD_*__NAMESPACES expects (empty: all). */}}
{{- define "tokenyard.namespacesEnv" -}}
{{- join "," .Values.watchNamespaces -}}
{{- end -}}

{{/* Pod and container security settings shared by both components. */}}
{{- define "tokenyard.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 10001
runAsGroup: 10001
fsGroup: 10001
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "tokenyard.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
runAsUser: 10001
runAsGroup: 10001
privileged: false
capabilities:
  drop:
    - ALL
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/* Settings shared by both components. */}}
{{- define "tokenyard.commonEnv" -}}
- name: TOKENYARD_LOG_LEVEL
  value: {{ .Values.log.level | quote }}
- name: TOKENYARD_LOG_FORMAT
  value: {{ .Values.log.format | quote }}
- name: POD_NAMESPACE
  valueFrom:
    fieldRef:
      fieldPath: metadata.namespace
- name: POD_NAME
  valueFrom:
    fieldRef:
      fieldPath: metadata.name
{{- end -}}

{{/* RBAC rules. Every verb here is one the operator or autoscaler uses; the chart
     tests assert this exact set, and docs/install.md explains each. */}}

{{/* Operator, namespaced resources (a ClusterRole when watching all namespaces). */}}
{{- define "tokenyard.operatorNamespacedRules" -}}
- apiGroups: ["tokenyard.dev"]
  resources: ["servingpools", "modeldeployments", "routingpolicies"]
  verbs: ["get", "list", "watch", "patch", "update"]
- apiGroups: ["tokenyard.dev"]
  resources: ["servingpools/status", "modeldeployments/status", "routingpolicies/status"]
  verbs: ["get", "patch", "update"]
- apiGroups: ["tokenyard.dev"]
  resources: ["modeldeployments/scale"]
  verbs: ["get", "patch", "update"]
- apiGroups: ["ray.io"]
  resources: ["rayservices"]
  verbs: ["get", "list", "watch", "create", "patch", "update", "delete"]
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create", "patch"]
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["get", "list", "watch"]
- apiGroups: ["kopf.dev"]
  resources: ["kopfpeerings"]
  verbs: ["get", "list", "watch", "patch"]
{{- end -}}

{{/* Operator, cluster-scoped resources: kopf reads CRDs and namespaces at start-up. */}}
{{- define "tokenyard.operatorClusterRules" -}}
- apiGroups: ["apiextensions.k8s.io"]
  resources: ["customresourcedefinitions"]
  verbs: ["get", "list", "watch"]
- apiGroups: [""]
  resources: ["namespaces"]
  verbs: ["get", "list", "watch"]
- apiGroups: ["kopf.dev"]
  resources: ["clusterkopfpeerings"]
  verbs: ["get", "list", "watch", "patch"]
{{- end -}}

{{- define "tokenyard.autoscalerNamespacedRules" -}}
- apiGroups: ["tokenyard.dev"]
  resources: ["servingpools", "modeldeployments", "routingpolicies"]
  verbs: ["get", "list", "watch"]
- apiGroups: ["tokenyard.dev"]
  resources: ["modeldeployments/scale", "modeldeployments/status", "servingpools/status"]
  verbs: ["get", "patch", "update"]
# The autoscaler writes events.k8s.io/v1 Events; the core group is the same objects
# seen through the older API, so granting both adds no reach.
- apiGroups: ["", "events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]
{{- end -}}

{{/* Leader election, only in the release namespace. */}}
{{- define "tokenyard.autoscalerLeaseRules" -}}
- apiGroups: ["coordination.k8s.io"]
  resources: ["leases"]
  verbs: ["get", "list", "watch", "create", "patch", "update"]
{{- end -}}
