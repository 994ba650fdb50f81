{{/* The rules of the watcher's and the applier's roles: docs/rbac.md's reference manifests are these lists
   (tests/unit/test_chart.py keeps them equal). Each definition is plain YAML. The "namespaced" lists go into
   ClusterRoles, or, with agent.watchNamespaces, into a Role in each of those namespaces (templates/rbac.yaml). */}}

{{- define "llm-operator.rules.watcher.cluster" -}}
# GPU capacity: allocatable per node minus the requests of the pods bound there.
- apiGroups: [""]
  resources: ["nodes", "pods"]
  verbs: ["list", "watch"]
{{- end }}

{{- define "llm-operator.rules.watcher.namespaced" -}}
- apiGroups: ["llm.example.com"]
  resources: ["llmmodels", "llmdeployments"]
  verbs: ["list", "watch"]
# The Deployments the applier manages (selected by app.kubernetes.io/managed-by=llm-operator): progress.
- apiGroups: ["apps"]
  resources: ["deployments"]
  verbs: ["list", "watch"]
# The Services the applier manages (same label): in the "exposed" network mode, their load balancer's addresses.
- apiGroups: [""]
  resources: ["services"]
  verbs: ["list", "watch"]
{{- end }}

{{- define "llm-operator.rules.applier.namespaced" -}}
# The rendered workload (applier/render.py MANAGED_KINDS): apply, and list + delete to prune.
- apiGroups: ["apps"]
  resources: ["deployments"]
  verbs: ["get", "list", "create", "patch", "delete"]
- apiGroups: [""]
  resources: ["services", "persistentvolumeclaims"]
  verbs: ["get", "list", "create", "patch", "delete"]
- apiGroups: ["networking.k8s.io"]
  resources: ["networkpolicies"]
  verbs: ["get", "list", "create", "patch", "delete"]
# One address in the origin cluster (applier/endpoints.py): the origin's EndpointSlices pointing at replicas in
# other clusters, and, in a serving cluster of the "mcs" network mode, the ServiceExport of the model's Service.
# Listed by label (to prune), server-side applied, deleted; never read one by one.
- apiGroups: ["discovery.k8s.io"]
  resources: ["endpointslices"]
  verbs: ["list", "create", "patch", "delete"]
- apiGroups: ["multicluster.x-k8s.io"]
  resources: ["serviceexports"]
  verbs: ["list", "create", "patch", "delete"]
- apiGroups: ["policy"]
  resources: ["poddisruptionbudgets"]
  verbs: ["get", "list", "create", "patch", "delete"]
- apiGroups: ["autoscaling"]
  resources: ["horizontalpodautoscalers"]
  verbs: ["get", "list", "create", "patch", "delete"]
# Status and the cleanup finalizer of LLMDeployments; their specs are the users'.
- apiGroups: ["llm.example.com"]
  resources: ["llmdeployments"]
  verbs: ["get", "patch"]
- apiGroups: ["llm.example.com"]
  resources: ["llmdeployments/status"]
  verbs: ["patch"]
# The status of an LLMModel the planner refused (why it is not used); their specs are the users'.
- apiGroups: ["llm.example.com"]
  resources: ["llmmodels"]
  verbs: ["get"]
- apiGroups: ["llm.example.com"]
  resources: ["llmmodels/status"]
  verbs: ["patch"]
# The fleet autoscaler's replica count, written as a HorizontalPodAutoscaler would.
- apiGroups: ["llm.example.com"]
  resources: ["llmdeployments/scale"]
  verbs: ["patch"]
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create"]
{{- end }}

{{/* The ServiceAccount a component's role is bound to. Called with (dict "root" $ "component" <name>). */}}
{{- define "llm-operator.accountOf" -}}
{{- include "llm-operator.fullname" .root }}-{{ ternary .component "agent" .root.Values.agent.split }}
{{- end }}
