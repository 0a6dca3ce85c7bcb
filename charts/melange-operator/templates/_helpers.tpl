{{/* Names and labels: release "melange" makes objects named melange-operator. */}}
{{- define "melange-operator.fullname" -}}
{{- if hasSuffix "operator" .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-operator" .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "melange-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "melange-operator.labels" -}}
{{ include "melange-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{- define "melange-operator.serviceAccountName" -}}
{{- default (include "melange-operator.fullname" .) .Values.serviceAccount.name -}}
{{- end -}}

{{- define "melange-operator.image" -}}
{{- $repository := required "image.repository is required: no melange-operator image is published; build the checkout's Dockerfile (docker build -t REGISTRY/melange-operator:TAG .), push it where the cluster pulls from, and set image.repository=REGISTRY/melange-operator (and image.tag when TAG is not the chart's appVersion)" .Values.image.repository -}}
{{- printf "%s:%s" $repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{- define "melange-operator.clusterwide" -}}
{{- if not .Values.watchNamespaces }}true{{ end -}}
{{- end -}}

{{/*
RBAC: exactly the (verb, resource) pairs the operator calls (tests/cluster/operator_calls.json,
recorded from a real API server's audit log by the cluster tests; tests/charts/test_chart.py
compares; `get secrets` only with secrets.read), plus `update` on llmservices/finalizers (for blockOwnerDeletion) and kopf's peering
objects when peering is on (kopf docs, "Deployment": get, list, watch, patch).
Rules for the namespaced resources: in a ClusterRole when watching every namespace, else in a Role
in each watched namespace.
*/}}
{{- define "melange-operator.namespacedRules" -}}
- apiGroups: [melange.ai]
  resources: [llmservices]
  verbs: [list, watch, patch]
- apiGroups: [melange.ai]
  resources: [llmservices/status]
  verbs: [patch]
{{- /* Not a call: the owned objects' ownerReferences set blockOwnerDeletion, which the API server
       allows only to who may update the owner's finalizers (OwnerReferencesPermissionEnforcement). */}}
- apiGroups: [melange.ai]
  resources: [llmservices/finalizers]
  verbs: [update]
{{- /* Owned objects are written by server-side apply: a patch, which the API server also authorizes as
       create when the object is new. Deployments are watched (a pass follows their readiness) and
       pods listed to say why a pool is not ready. */}}
- apiGroups: [apps]
  resources: [deployments]
  verbs: [create, delete, list, watch, patch]
- apiGroups: [""]
  resources: [services]
  verbs: [create, delete, list, patch]
- apiGroups: [""]
  resources: [configmaps]
  verbs: [create, get, list, patch]
- apiGroups: [""]
  resources: [pods]
  verbs: [list]
- apiGroups: [policy]
  resources: [poddisruptionbudgets]
  verbs: [create, delete, list, patch]
{{- /* Each router runs as its own ServiceAccount with a Role to watch its routing ConfigMap and its pools'
       EndpointSlices; the API server lets the operator grant only what it holds itself (RBAC escalation
       prevention), hence watch on configmaps and list, watch on endpointslices, which it does not call. */}}
- apiGroups: [""]
  resources: [serviceaccounts]
  verbs: [create, list, patch]
- apiGroups: [rbac.authorization.k8s.io]
  resources: [roles, rolebindings]
  verbs: [create, list, patch]
- apiGroups: [""]
  resources: [configmaps]
  verbs: [watch]
- apiGroups: [discovery.k8s.io]
  resources: [endpointslices]
  verbs: [list, watch]
{{- if ne (include "melange-operator.podMonitors" .) "off" }}
- apiGroups: [monitoring.coreos.com]
  resources: [podmonitors]
  verbs: [create, list, patch]
{{- end }}
- apiGroups: [""]
  resources: [events]
  verbs: [create]
{{- /* Only for specs whose workload.prometheus.bearerTokenSecretRef names a Secret (secrets.read). */}}
{{- if .Values.secrets.read }}
- apiGroups: [""]
  resources: [secrets]
  verbs: [get]
{{- end }}
{{- if and .Values.peering.enabled (not (include "melange-operator.clusterwide" .)) }}
- apiGroups: [kopf.dev]
  resources: [kopfpeerings]
  verbs: [get, list, watch, patch]
{{- end }}
{{- end -}}

{{/* Rules for cluster-scoped resources, always in the ClusterRole. */}}
{{- define "melange-operator.clusterRules" -}}
- apiGroups: [apiextensions.k8s.io]
  resources: [customresourcedefinitions]
  verbs: [list, watch]
- apiGroups: [""]
  resources: [namespaces]
  verbs: [list, watch]
{{- if .Values.nodePools.karpenter.enabled }}
- apiGroups: [karpenter.sh]
  resources: [nodepools]
  verbs: [create, delete, list, patch]
{{- end }}
{{- if and .Values.peering.enabled (include "melange-operator.clusterwide" .) }}
- apiGroups: [kopf.dev]
  resources: [clusterkopfpeerings]
  verbs: [get, list, watch, patch]
{{- end }}
{{- end -}}

{{/* Where the Prometheus bearer token and CA bundle are mounted. */}}
{{- define "melange-operator.prometheusTokenDir" -}}/var/run/secrets/melange/prometheus{{- end -}}
{{- define "melange-operator.prometheusCADir" -}}/etc/melange/prometheus-ca{{- end -}}

{{/* The operator's --pod-monitors from podMonitors.enabled: auto, on (true) or off (false). */}}
{{- define "melange-operator.podMonitors" -}}
{{- $enabled := toString .Values.podMonitors.enabled -}}
{{- if eq $enabled "auto" }}auto{{ else if eq $enabled "true" }}on{{ else }}off{{ end -}}
{{- end -}}
