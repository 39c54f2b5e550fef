{{/*
Deployment and Service of a `kanari drift ...` HTTP worker (drift monitor, alert receiver): one port for its
API and /metrics. Call with (dict "ctx" $ "component" NAME "values" VALUES "command" LIST "env" YAML), plus "config" (the
YAML of a ConfigMap mounted at /etc/kanari) and "kubeAPI" (mount the ServiceAccount token) when needed. With
.Values.tls.enabled the worker serves HTTPS with the certificate Secret mounted at /var/run/kanari/tls.
*/}}
{{- define "kanari.worker" -}}
{{- $ctx := .ctx }}
{{- $values := .values }}
{{- $name := printf "%s-%s" (include "kanari.fullname" $ctx) .component }}
{{- $tls := $ctx.Values.tls.enabled }}
{{- $command := .command }}
{{- if $tls }}
{{- $command = concat $command (list "--tls-cert-file" "/var/run/kanari/tls/tls.crt" "--tls-key-file" "/var/run/kanari/tls/tls.key") }}
{{- end }}
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {{ $name }}
  namespace: {{ $ctx.Release.Namespace }}
  labels:
    {{- include "kanari.componentLabels" (dict "ctx" $ctx "component" .component) | nindent 4 }}
spec:
  replicas: {{ $values.replicas }}
  selector:
    matchLabels:
      {{- include "kanari.selectorLabels" (dict "ctx" $ctx "component" .component) | nindent 6 }}
  template:
    metadata:
      labels:
        {{- include "kanari.componentLabels" (dict "ctx" $ctx "component" .component) | nindent 8 }}
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
        env:
        - name: AWS_REGION
          value: {{ $ctx.Values.aws.region | quote }}
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
{{- end -}}
