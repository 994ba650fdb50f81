{{/* Identity on the bus and TLS (issue 16): the nkey seed Secret, TLS Secrets, and what the pods mount from them.
   Kept apart from _helpers.tpl; the shared helpers include these. */}}

{{- define "llm-operator.natsSeedSecretName" -}}
{{- if .Values.nats.nkeySeedSecret }}{{ .Values.nats.nkeySeedSecret }}{{ else }}{{ printf "%s-nats-nkey" (include "llm-operator.fullname" .) }}{{ end }}
{{- end }}

{{- define "llm-operator.natsSeedSecretKey" -}}
{{- if .Values.nats.nkeySeedSecret }}{{ .Values.nats.nkeySeedSecretKey }}{{ else }}nats.nk{{ end }}
{{- end }}

{{- define "llm-operator.hasNatsSeed" -}}
{{- if or .Values.nats.nkeySeed .Values.nats.nkeySeedSecret }}true{{ end }}
{{- end }}

{{/* Environment: the seed, TLS files, and where /metrics and the probes listen. */}}
{{- define "llm-operator.securityEnv" -}}
- name: LLMOP_METRICS_HOST
  value: {{ .Values.metrics.host | quote }}
{{- if include "llm-operator.hasNatsSeed" . }}
- name: LLMOP_NATS_NKEY_SEED
  value: /etc/llm-operator/nats-nkey/nats.nk
{{- end }}
{{- with .Values.nats.tls.existingSecret }}
- name: LLMOP_NATS_TLS_CA
  value: /etc/llm-operator/nats-tls/ca.crt
{{- if $.Values.nats.tls.clientCertificate }}
- name: LLMOP_NATS_TLS_CERT
  value: /etc/llm-operator/nats-tls/tls.crt
- name: LLMOP_NATS_TLS_KEY
  value: /etc/llm-operator/nats-tls/tls.key
{{- end }}
{{- end }}
{{- with .Values.nats.tls.serverName }}
- name: LLMOP_NATS_TLS_HOSTNAME
  value: {{ . | quote }}
{{- end }}
{{- end }}

{{- define "llm-operator.databaseTlsEnv" -}}
{{- with .Values.planner.database.tls.existingSecret }}
- name: LLMOP_DATABASE_TLS_CA
  value: /etc/llm-operator/database-tls/ca.crt
{{- if $.Values.planner.database.tls.clientCertificate }}
- name: LLMOP_DATABASE_TLS_CERT
  value: /etc/llm-operator/database-tls/tls.crt
- name: LLMOP_DATABASE_TLS_KEY
  value: /etc/llm-operator/database-tls/tls.key
{{- end }}
{{- end }}
{{- end }}

{{- define "llm-operator.securityVolumeMounts" -}}
{{- if include "llm-operator.hasNatsSeed" . }}
- name: nats-nkey
  mountPath: /etc/llm-operator/nats-nkey
  readOnly: true
{{- end }}
{{- if .Values.nats.tls.existingSecret }}
- name: nats-tls
  mountPath: /etc/llm-operator/nats-tls
  readOnly: true
{{- end }}
{{- end }}

{{- define "llm-operator.databaseTlsVolumeMount" -}}
{{- if .Values.planner.database.tls.existingSecret }}
- name: database-tls
  mountPath: /etc/llm-operator/database-tls
  readOnly: true
{{- end }}
{{- end }}

{{- define "llm-operator.securityVolumes" -}}
{{- if include "llm-operator.hasNatsSeed" . }}
- name: nats-nkey
  secret:
    secretName: {{ include "llm-operator.natsSeedSecretName" . }}
    defaultMode: 0440
    items:
      - key: {{ include "llm-operator.natsSeedSecretKey" . }}
        path: nats.nk
{{- end }}
{{- with .Values.nats.tls.existingSecret }}
- name: nats-tls
  secret:
    secretName: {{ . }}
    defaultMode: 0440
{{- end }}
{{- if and .Values.planner.enabled .Values.planner.database.tls.existingSecret }}
- name: database-tls
  secret:
    secretName: {{ .Values.planner.database.tls.existingSecret }}
    defaultMode: 0440
{{- end }}
{{- end }}

{{/* Authentication is on by default: a release without an identity fails with the command that makes one. */}}
{{- define "llm-operator.validateSecurity" -}}
{{- $v := .Values }}
{{- if and $v.nats.requireAuth (or $v.agent.enabled $v.planner.enabled) }}
{{- if not (or $v.nats.nkeySeed $v.nats.nkeySeedSecret $v.nats.credentials $v.nats.existingSecret) }}
{{- fail "nats: authentication is on: give this release its NATS identity, e.g. --set-file nats.nkeySeed=./bus/fleet/<cluster>/nats.nk (made on the hub by `llm-operator bus add-cluster <cluster>`; the planner's by `llm-operator bus init`), or nats.nkeySeedSecret (or nats.requireAuth=false for a NATS without authentication)" }}
{{- end }}
{{- if and $v.agent.enabled $v.planner.enabled (include "llm-operator.hasNatsSeed" .) }}
{{- fail "nats.nkeySeed: the planner and an agent need different identities; install them as separate releases" }}
{{- end }}
{{- end }}
{{- end }}
