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

{{/* RBAC rules: exactly the calls the operator and autoscaler make, no more. The chart
     tests pin this exact set, tests/integration/operator/test_rbac.py checks every call
     recorded from a run of the operator against it, and docs/install.md explains each. */}}

{{/* Operator, namespaced resources (a ClusterRole when watching all namespaces). kopf
     lists and watches the three kinds (it never writes to them: the operator has no
     change handlers, so no kopf annotations); the reconciler reads pools and models,
     writes status, owns one RayService and the router's state claim per pool, checks
     that referenced Secrets exist and posts core/v1 Events (kopf's own Events are POSTed
     too, never patched). Policies are only ever read from kopf's index, so they get no
     get. */}}
{{- define "tokenyard.operatorNamespacedRules" -}}
- apiGroups: ["tokenyard.dev"]
  resources: ["servingpools", "modeldeployments"]
  verbs: ["get", "list", "watch"]
- apiGroups: ["tokenyard.dev"]
  resources: ["routingpolicies"]
  verbs: ["list", "watch"]
- apiGroups: ["tokenyard.dev"]
  resources: ["servingpools/status", "modeldeployments/status", "routingpolicies/status"]
  verbs: ["patch"]
- apiGroups: ["ray.io"]
  resources: ["rayservices"]
  verbs: ["get", "create", "patch"]
- apiGroups: [""]
  resources: ["persistentvolumeclaims"]
  verbs: ["get", "create"]
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["get"]
# The artifact of a RoutingPolicy's Learned classifier (spec.classifier.artifactRef).
- apiGroups: [""]
  resources: ["configmaps"]
  verbs: ["get"]
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create"]
{{- if and .Values.operator.peering .Values.watchNamespaces }}
# kopf peering in each watched namespace: it lists and watches the KopfPeering and
# patches its own heartbeat into it (the object itself is created by the admin).
- apiGroups: ["kopf.dev"]
  resources: ["kopfpeerings"]
  verbs: ["list", "watch", "patch"]
{{- end }}
{{- end -}}

{{/* Operator, cluster-scoped resources: none, except a ClusterKopfPeering with peering
     on and the whole cluster watched. kopf's scanning of CRDs and namespaces is off (it
     would list and watch every CRD of the cluster, megabytes each for some operators):
     it finds its resources through discovery, open to every authenticated user. */}}
{{- define "tokenyard.operatorClusterRules" -}}
{{- if and .Values.operator.peering (not .Values.watchNamespaces) }}
- apiGroups: ["kopf.dev"]
  resources: ["clusterkopfpeerings"]
  verbs: ["list", "watch", "patch"]
{{- end }}
{{- end -}}

{{/* Autoscaler, in the watched namespaces: it lists pools and models each interval,
     writes replicas through the scale subresource and its decision through status, and
     posts events.k8s.io/v1 Events (create only; each has a unique name). */}}
{{- define "tokenyard.autoscalerNamespacedRules" -}}
- apiGroups: ["tokenyard.dev"]
  resources: ["servingpools", "modeldeployments", "routingpolicies"]
  verbs: ["list"]
- apiGroups: ["tokenyard.dev"]
  resources: ["modeldeployments/scale", "modeldeployments/status", "servingpools/status", "routingpolicies/status"]
  verbs: ["patch"]
- apiGroups: ["events.k8s.io"]
  resources: ["events"]
  verbs: ["create"]
{{- end -}}

{{/* Leader election, only in the release namespace: read the Lease, create it when
     missing, renew or take it over with a merge patch carrying its resourceVersion. */}}
{{- define "tokenyard.autoscalerLeaseRules" -}}
- apiGroups: ["coordination.k8s.io"]
  resources: ["leases"]
  verbs: ["get", "create", "patch"]
{{- end -}}

{{/* Target labels of the Ray pods' scrapes: the pool and the Ray worker group. */}}
{{- define "tokenyard.poolRelabelings" -}}
- sourceLabels: [__meta_kubernetes_pod_label_tokenyard_dev_pool]
  targetLabel: pool
- sourceLabels: [__meta_kubernetes_pod_label_ray_io_group]
  targetLabel: ray_group
{{- end -}}

{{/* Secret (release namespace, key `token`) of the routers' admin bearer token. */}}
{{- define "tokenyard.adminTokenSecret" -}}
{{- .Values.router.adminToken.existingSecret | default (printf "%s-router-admin" (include "tokenyard.fullname" .)) -}}
{{- end -}}
