{{/* Names ---------------------------------------------------------------------------------------------- */}}

{{- define "llm-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Release name if it already holds the chart's name ("llm-operator"), else "<release>-<chart>". */}}
{{- define "llm-operator.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 50 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 50 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 50 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "llm-operator.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels ----------------------------------------------------------------------------------------------
   Note: app.kubernetes.io/managed-by is Helm here. The operator's own objects carry managed-by=llm-operator,
   and its watcher selects on that, so the chart's Deployments are never mistaken for managed workloads. */}}

{{- define "llm-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "llm-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "llm-operator.labels" -}}
helm.sh/chart: {{ include "llm-operator.chart" . }}
{{ include "llm-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: llm-operator
{{- end }}

{{/* Values ---------------------------------------------------------------------------------------------- */}}

{{- define "llm-operator.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* "k=v,k2=v2" (keys sorted) for `--labels`. */}}
{{- define "llm-operator.clusterLabels" -}}
{{- $pairs := list }}
{{- range $key, $value := .Values.cluster.labels }}
{{- $pairs = append $pairs (printf "%s=%s" $key $value) }}
{{- end }}
{{- join "," $pairs }}
{{- end }}

{{- define "llm-operator.natsSecretName" -}}
{{- if .Values.nats.existingSecret }}
{{- .Values.nats.existingSecret }}
{{- else }}
{{- printf "%s-nats" (include "llm-operator.fullname" .) }}
{{- end }}
{{- end }}

{{- define "llm-operator.natsSecretKey" -}}
{{- if .Values.nats.existingSecret }}{{ .Values.nats.existingSecretKey }}{{ else }}nats.creds{{ end }}
{{- end }}

{{- define "llm-operator.hasNatsCredentials" -}}
{{- if or .Values.nats.credentials .Values.nats.existingSecret }}true{{ end }}
{{- end }}

{{- define "llm-operator.databaseSecretName" -}}
{{- if .Values.planner.database.existingSecret }}
{{- .Values.planner.database.existingSecret }}
{{- else }}
{{- printf "%s-database" (include "llm-operator.fullname" .) }}
{{- end }}
{{- end }}

{{- define "llm-operator.databaseSecretKey" -}}
{{- if .Values.planner.database.existingSecret }}{{ .Values.planner.database.existingSecretKey }}{{ else }}url{{ end }}
{{- end }}

{{/* Pieces of the pod specs ---------------------------------------------------------------------------- */}}

{{/* Environment shared by the agent and the planner. */}}
{{- define "llm-operator.commonEnv" -}}
- name: LLMOP_NATS_URL
  value: {{ .Values.nats.url | quote }}
- name: LLMOP_SUBJECT_PREFIX
  value: {{ .Values.nats.subjectPrefix | quote }}
- name: LLMOP_LOG_FORMAT
  value: {{ .Values.log.format | quote }}
- name: LLMOP_LOG_LEVEL
  value: {{ .Values.log.level | quote }}
- name: LLMOP_METRICS_PORT
  value: {{ .Values.metrics.port | quote }}
{{- if include "llm-operator.hasNatsCredentials" . }}
- name: LLMOP_NATS_CREDENTIALS
  value: /etc/llm-operator/nats/nats.creds
{{- end }}
{{ include "llm-operator.securityEnv" . }}
{{- end }}

{{- define "llm-operator.natsVolumeMount" -}}
{{- if include "llm-operator.hasNatsCredentials" . -}}
- name: nats-credentials
  mountPath: /etc/llm-operator/nats
  readOnly: true
{{- end }}
{{ include "llm-operator.securityVolumeMounts" . }}
{{- end }}

{{- define "llm-operator.volumes" -}}
- name: tmp
  emptyDir:
    sizeLimit: 64Mi
{{- if include "llm-operator.hasNatsCredentials" . }}
- name: nats-credentials
  secret:
    secretName: {{ include "llm-operator.natsSecretName" . }}
    defaultMode: 0440
    items:
      - key: {{ include "llm-operator.natsSecretKey" . }}
        path: nats.creds
{{- end }}
{{ include "llm-operator.securityVolumes" . }}
{{- end }}

{{/* Pod annotations: the user's, plus checksums of the chart-managed Secrets so that changing one rolls the pods.
   Called with (dict "root" $ "extra" <podAnnotations> "database" <bool>). Empty when there is nothing to add. */}}
{{- define "llm-operator.podAnnotations" -}}
{{- $v := .root.Values }}
{{- $out := dict }}
{{- if and $v.nats.credentials (not $v.nats.existingSecret) }}
{{- $_ := set $out "checksum/nats-credentials" ($v.nats.credentials | sha256sum) }}
{{- end }}
{{- if and $v.nats.nkeySeed (not $v.nats.nkeySeedSecret) }}
{{- $_ := set $out "checksum/nats-nkey" ($v.nats.nkeySeed | sha256sum) }}
{{- end }}
{{- if and .database $v.planner.database.url (not $v.planner.database.existingSecret) }}
{{- $_ := set $out "checksum/database" ($v.planner.database.url | sha256sum) }}
{{- end }}
{{- /* The tenant policy and trusted keys are read at start: a change rolls the pods. */}}
{{- $_ := set $out "checksum/trust" (printf "%s%s" (toJson $v.tenantPolicy) (toJson $v.planSigning) | sha256sum) }}
{{- $out = merge $out (.extra | default dict) }}
{{- if $out }}{{ toYaml $out }}{{ end }}
{{- end }}

{{/* Checks the schema cannot express with a clear message. */}}
{{- define "llm-operator.validate" -}}
{{- if and .Values.agent.enabled (eq (toString .Values.cluster.name) "hub") }}
{{- fail "cluster.name: \"hub\" is reserved for the hub's own subjects; choose another name for this cluster" }}
{{- end }}
{{- include "llm-operator.validateSecurity" . }}
{{- end }}

{{/* /metrics, /healthz and /readyz of every operator container, and the probes that use them. */}}
{{- define "llm-operator.probes" -}}
ports:
  - name: metrics
    containerPort: {{ .Values.metrics.port }}
    protocol: TCP
livenessProbe:
  httpGet:
    path: /healthz
    port: metrics
  periodSeconds: 20
  failureThreshold: 3
readinessProbe:
  httpGet:
    path: /readyz
    port: metrics
  periodSeconds: 10
  timeoutSeconds: 5
  failureThreshold: 3
{{- end }}
