{{/*
The controller's notification settings (kanari.notify): webhook URLs from a Secret the platform team creates
(they authorise posting, so they are never in values), the rest from values. Nothing when no Secret is named.
*/}}
{{- define "kanari.notifyEnv" -}}
{{- $n := .Values.notifications }}
{{- if $n.existingSecret }}
{{- range $key, $var := dict "slack" "KANARI_NOTIFY_SLACK_URL" "teams" "KANARI_NOTIFY_TEAMS_URL" "webhook" "KANARI_NOTIFY_WEBHOOK_URL" "webhookToken" "KANARI_NOTIFY_WEBHOOK_TOKEN" }}
- name: {{ $var }}
  valueFrom:
    secretKeyRef:
      name: {{ $n.existingSecret }}
      key: {{ $key }}
      optional: true
{{- end }}
- name: KANARI_NOTIFY_EVENTS
  value: {{ join "," $n.events | quote }}
- name: KANARI_NOTIFY_RATE_PER_MINUTE
  value: {{ $n.ratePerMinute | quote }}
- name: KANARI_NOTIFY_TEMPLATES
  value: {{ if $n.templates }}{{ toJson $n.templates | quote }}{{ else }}""{{ end }}
- name: KANARI_NOTIFY_DASHBOARD_URL
  value: {{ $n.dashboardUrl | quote }}
{{- end }}
{{- end -}}
