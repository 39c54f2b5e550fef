{{/* Chart name, truncated to fit label values. */}}
{{- define "kanari.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/*
Full name: <release>-<chart>, or the release name alone when it already contains the chart name.
Capped at 40 characters so that "<fullname>-alert-receiver" and friends stay valid DNS labels.
*/}}
{{- define "kanari.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* Name of a component's Deployment and Service: call with (dict "ctx" $ "component" "controller"). */}}
{{- define "kanari.componentName" -}}
{{- printf "%s-%s" (include "kanari.fullname" .ctx) .component -}}
{{- end -}}

{{/*
The `job` label Prometheus gives a component's series: the ServiceMonitor's job is the Service's name (no
jobLabel set), unless monitoring.scrapeJobs names another scrape. The operator pins it in every query over a
kanari_* series (KANARI_MONITOR_JOB / KANARI_CONTROLLER_JOB) and the platform rules pin it too, so a series
another target exports under the same name is never read. Call with (dict "ctx" $ "component" "drift-monitor").
*/}}
{{- define "kanari.scrapeJob" -}}
{{- $override := get (.ctx.Values.monitoring.scrapeJobs | default dict) (.component | camelcase | untitle) -}}
{{- default (include "kanari.componentName" .) $override -}}
{{- end -}}

{{- define "kanari.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels on every object. */}}
{{- define "kanari.labels" -}}
helm.sh/chart: {{ include "kanari.chart" . }}
app.kubernetes.io/name: {{ include "kanari.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: kanari
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Selector labels of one component: call with (dict "ctx" $ "component" "controller"). */}}
{{- define "kanari.selectorLabels" -}}
app.kubernetes.io/name: {{ include "kanari.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "kanari.componentLabels" -}}
{{ include "kanari.labels" .ctx }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "kanari.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}
{{- end -}}

{{- define "kanari.controller.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (printf "%s-controller" (include "kanari.fullname" .)) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "kanari.peeringName" -}}
{{- default (include "kanari.fullname" .) .Values.controller.peering.name -}}
{{- end -}}

{{- define "kanari.monitorApiSecretName" -}}
{{- default (printf "%s-drift-monitor-api" (include "kanari.fullname" .)) .Values.driftMonitor.apiAuth.existingSecret -}}
{{- end -}}

{{- define "kanari.receiverSecretName" -}}
{{- default (printf "%s-alert-receiver" (include "kanari.fullname" .)) .Values.alertReceiver.auth.existingSecret -}}
{{- end -}}

{{/*
Pod security for every Kanari pod: the "restricted" Pod Security Standard (non-root, no privilege
escalation, no capabilities, RuntimeDefault seccomp), plus a read-only root filesystem.
*/}}
{{- define "kanari.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
fsGroup: 65532
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "kanari.containerSecurityContext" -}}
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
privileged: false
capabilities:
  drop: ["ALL"]
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/* Default scheduling: spread replicas of a component over nodes unless the user set an affinity. */}}
{{- define "kanari.affinity" -}}
{{- if .values.affinity -}}
{{ toYaml .values.affinity }}
{{- else -}}
podAntiAffinity:
  preferredDuringSchedulingIgnoredDuringExecution:
  - weight: 100
    podAffinityTerm:
      topologyKey: kubernetes.io/hostname
      labelSelector:
        matchLabels:
          {{- include "kanari.selectorLabels" (dict "ctx" .ctx "component" .component) | nindent 10 }}
{{- end -}}
{{- end -}}

{{/* Scheduling fields shared by the Deployments: call with (dict "ctx" $ "component" NAME "values" VALUES). */}}
{{- define "kanari.scheduling" -}}
affinity:
  {{- include "kanari.affinity" . | nindent 2 }}
{{- with .values.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .values.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .values.priorityClassName }}
priorityClassName: {{ . }}
{{- end }}
{{- with .values.topologySpreadConstraints }}
{{- $selector := dict "matchLabels" (fromYaml (include "kanari.selectorLabels" (dict "ctx" $.ctx "component" $.component))) }}
{{- $constraints := list }}
{{- range . }}
{{- $constraints = append $constraints (ternary . (merge (dict "labelSelector" $selector) .) (hasKey . "labelSelector")) }}
{{- end }}
topologySpreadConstraints:
  {{- toYaml $constraints | nindent 2 }}
{{- end }}
{{- with .ctx.Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{/* Python writes bytecode and temporary files; the root filesystem is read-only, so /tmp is a volume. */}}
{{- define "kanari.tmpVolume" -}}
- name: tmp
  emptyDir:
    sizeLimit: 64Mi
{{- end -}}

{{/* Pod labels: the component's labels plus the user's podLabels (the selector never changes). */}}
{{- define "kanari.podLabels" -}}
{{ include "kanari.componentLabels" (dict "ctx" .ctx "component" .component) }}
{{- with .values.podLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* The log format every Kanari container is given (values logFormat). */}}
{{- define "kanari.logFormatEnv" -}}
- name: KANARI_LOG_FORMAT
  value: {{ .Values.logFormat | quote }}
{{- end -}}

{{/*
The Secret holding the drift monitor's and alert receiver's certificate (tls.crt, tls.key, ca.crt).
*/}}
{{- define "kanari.tlsSecretName" -}}
{{- default (printf "%s-tls" (include "kanari.fullname" .)) .Values.tls.existingSecret -}}
{{- end -}}

{{/*
http or https: how the drift monitor and the alert receiver are reached.
*/}}
{{- define "kanari.workerScheme" -}}
{{- ternary "https" "http" .Values.tls.enabled -}}
{{- end -}}
