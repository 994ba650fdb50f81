{{/* Signed plans and the tenant policy (docs/deploy.md): environment, volumes and mounts of the operator's pods.
   Called with (dict "root" $ "planner" <bool>): the planner mounts its private key; the agents get the public
   keys. Both get the tenant policy (a ConfigMap, templates/policy.yaml) and the release's namespace, which the
   policy always refuses. */}}

{{- define "llm-operator.trustEnv" -}}
{{- $v := .root.Values }}
- name: LLMOP_TENANT_POLICY
  value: /etc/llm-operator/policy/policy.json
- name: LLMOP_OPERATOR_NAMESPACE
  value: {{ .root.Release.Namespace | quote }}
{{- if .planner }}
- name: LLMOP_PLAN_SIGNING_KEY
  value: /etc/llm-operator/signing/key.pem
{{- else }}
- name: LLMOP_PLAN_PUBLIC_KEYS
  value: {{ toJson $v.planSigning.publicKeys | quote }}
- name: LLMOP_PLAN_MAX_EPOCH_JUMP
  value: {{ $v.planSigning.maxEpochJump | quote }}
{{- end }}
{{- end }}

{{- define "llm-operator.trustVolumeMounts" -}}
- name: tenant-policy
  mountPath: /etc/llm-operator/policy
  readOnly: true
{{- if .planner }}
- name: plan-signing
  mountPath: /etc/llm-operator/signing
  readOnly: true
{{- end }}
{{- end }}

{{- define "llm-operator.trustVolumes" -}}
- name: tenant-policy
  configMap:
    name: {{ include "llm-operator.fullname" .root }}-policy
{{- if .planner }}
- name: plan-signing
  secret:
    secretName: {{ .root.Values.planSigning.existingSecret }}
    defaultMode: 0400
    items:
      - key: {{ .root.Values.planSigning.existingSecretKey }}
        path: key.pem
{{- end }}
{{- end }}

{{/* The tenant policy as the operator reads it (api/policy.py TenantPolicy). */}}
{{- define "llm-operator.tenantPolicy" -}}
{{- toJson .Values.tenantPolicy }}
{{- end }}

{{/* "true" when the applier may create namespaces: some rule says so, and its rights are not confined to
   watchNamespaces (Roles live in namespaces that exist). */}}
{{- define "llm-operator.createsNamespaces" -}}
{{- $creates := false }}
{{- if not .Values.agent.watchNamespaces }}
{{- range .Values.tenantPolicy.rules }}{{ if .createNamespaces }}{{ $creates = true }}{{ end }}{{ end }}
{{- end }}
{{- if $creates }}true{{ end }}
{{- end }}
