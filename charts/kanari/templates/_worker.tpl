{{/*
Deployment and Service of a `kanari drift ...` HTTP worker (drift monitor, alert receiver): one port for its
API and /metrics. Call with (dict "ctx" $ "component" NAME "values" VALUES "command" LIST "env" YAML), plus "config" (the
YAML of a ConfigMap mounted at /etc/kanari) and "kubeAPI" (mount the ServiceAccount token) when needed, and
"peersService" (a name) to run it as a StatefulSet with that headless Service, and "persistence" (a dict with
size, storageClass and mountPath; with a peersService only) to give each replica a PersistentVolumeClaim from
volumeClaimTemplates mounted there. With .Values.tls.enabled the worker serves HTTPS with the certificate Secret
mounted at /var/run/kanari/tls.
*/}}
{{- define "kanari.worker" -}}
{{- $ctx := .ctx }}
{{- $values := .values }}
{{- $name := include "kanari.componentName" (dict "ctx" $ctx "component" .component) }}
{{- $tls := $ctx.Values.tls.enabled }}
{{- $command := .command }}
{{- if $tls }}
{{- $command = concat $command (list "--tls-cert-file" "/var/run/kanari/tls/tls.crt" "--tls-key-file" "/var/run/kanari/tls/tls.key") }}
{{- end }}
apiVersion: apps/v1
kind: {{ ternary "Deployment" "StatefulSet" (empty .peersService) }}
metadata:
  name: {{ $name }}
  namespace: {{ $ctx.Release.Namespace }}
  labels:
    {{- include "kanari.componentLabels" (dict "ctx" $ctx "component" .component) | nindent 4 }}
spec:
  replicas: {{ $values.replicas }}
  revisionHistoryLimit: {{ $values.revisionHistoryLimit }}
  {{- with .peersService }}
  # Stable pod names (<name>-<ordinal>) and DNS through the headless Service: each replica owns a share.
  serviceName: {{ . }}
  podManagementPolicy: Parallel
  {{- end }}
  selector:
    matchLabels:
      {{- include "kanari.selectorLabels" (dict "ctx" $ctx "component" .component) | nindent 6 }}
  template:
    metadata:
      labels:
        {{- include "kanari.podLabels" (dict "ctx" $ctx "component" .component "values" $values) | nindent 8 }}
      {{- if or $values.podAnnotations .config }}
      annotations:
        {{- with $values.podAnnotations }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
        {{- with .config }}
        # A changed configuration rolls the pods.
        checksum/config: {{ . | sha256sum }}
        {{- end }}
      {{- end }}
    spec:
      serviceAccountName: {{ $name }}
      automountServiceAccountToken: {{ .kubeAPI | default false }}
      securityContext:
        {{- include "kanari.podSecurityContext" $ctx | nindent 8 }}
      {{- include "kanari.scheduling" . | nindent 6 }}
      containers:
      - name: {{ .component }}
        image: {{ include "kanari.image" $ctx }}
        imagePullPolicy: {{ $ctx.Values.image.pullPolicy }}
        command: {{ toJson $command }}
        {{- with $values.extraArgs }}
        args: {{ toJson . }}
        {{- end }}
        env:
        - name: AWS_REGION
          value: {{ $ctx.Values.aws.region | quote }}
        {{- include "kanari.logFormatEnv" $ctx | nindent 8 }}
        {{- with .env }}
        {{- . | nindent 8 }}
        {{- end }}
        {{- with $values.extraEnv }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
        ports:
        - name: http
          containerPort: {{ $values.port }}
          protocol: TCP
        livenessProbe:
          httpGet:
            path: /healthz
            port: http
            scheme: {{ ternary "HTTPS" "HTTP" $tls }}
          periodSeconds: 20
          timeoutSeconds: 5
        readinessProbe:
          httpGet:
            path: /healthz
            port: http
            scheme: {{ ternary "HTTPS" "HTTP" $tls }}
          periodSeconds: 10
          timeoutSeconds: 5
        resources:
          {{- toYaml $values.resources | nindent 10 }}
        securityContext:
          {{- include "kanari.containerSecurityContext" $ctx | nindent 10 }}
        volumeMounts:
        - name: tmp
          mountPath: /tmp
        {{- if .config }}
        - name: config
          mountPath: /etc/kanari
          readOnly: true
        {{- end }}
        {{- if $tls }}
        - name: tls
          mountPath: /var/run/kanari/tls
          readOnly: true
        {{- end }}
        {{- with .persistence }}
        - name: state
          mountPath: {{ .mountPath }}
        {{- end }}
        {{- with $values.extraVolumeMounts }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      volumes:
        {{- include "kanari.tmpVolume" $ctx | nindent 8 }}
        {{- if .config }}
        - name: config
          configMap:
            name: {{ $name }}
        {{- end }}
        {{- if $tls }}
        - name: tls
          secret:
            secretName: {{ include "kanari.tlsSecretName" $ctx }}
            defaultMode: 0440
        {{- end }}
        {{- with $values.extraVolumes }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
  {{- with .persistence }}
  # One volume per replica, kept across restarts and rescheduling (the pod's own share of the state).
  volumeClaimTemplates:
  - metadata:
      name: state
      labels:
        {{- include "kanari.componentLabels" (dict "ctx" $ctx "component" $.component) | nindent 8 }}
    spec:
      accessModes: [ReadWriteOnce]
      {{- with .storageClass }}
      storageClassName: {{ . | quote }}
      {{- end }}
      resources:
        requests:
          storage: {{ .size | quote }}
  {{- end }}
{{- if .config }}
---
apiVersion: v1
kind: ConfigMap
metadata:
  name: {{ $name }}
  namespace: {{ $ctx.Release.Namespace }}
  labels:
    {{- include "kanari.componentLabels" (dict "ctx" $ctx "component" .component) | nindent 4 }}
data:
  {{- .config | nindent 2 }}
{{- end }}
---
apiVersion: v1
kind: Service
metadata:
  name: {{ $name }}
  namespace: {{ $ctx.Release.Namespace }}
  labels:
    {{- include "kanari.componentLabels" (dict "ctx" $ctx "component" .component) | nindent 4 }}
spec:
  type: ClusterIP
  selector:
    {{- include "kanari.selectorLabels" (dict "ctx" $ctx "component" .component) | nindent 4 }}
  ports:
  - name: http
    port: {{ $values.port }}
    targetPort: http
    protocol: TCP
{{- with .peersService }}
---
# Headless: one DNS name per replica, for the one hop from the replica an event lands on to its owner.
apiVersion: v1
kind: Service
metadata:
  name: {{ . }}
  namespace: {{ $ctx.Release.Namespace }}
  labels:
    # Its own component label: the ServiceMonitor must not scrape every replica twice through it.
    {{- include "kanari.componentLabels" (dict "ctx" $ctx "component" (printf "%s-peers" $.component)) | nindent 4 }}
spec:
  clusterIP: None
  publishNotReadyAddresses: true
  selector:
    {{- include "kanari.selectorLabels" (dict "ctx" $ctx "component" $.component) | nindent 4 }}
  ports:
  - name: http
    port: {{ $values.port }}
    targetPort: http
    protocol: TCP
{{- end }}
{{- end -}}
