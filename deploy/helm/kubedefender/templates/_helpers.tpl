{{/* Names and labels shared by every template. */}}
{{- define "kubedefender.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "kubedefender.selectorLabels" -}}
app.kubernetes.io/name: kubedefender
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "kubedefender.labels" -}}
{{ include "kubedefender.selectorLabels" . }}
app.kubernetes.io/part-of: kubedefender
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "kubedefender.redisName" -}}{{ include "kubedefender.fullname" . }}-redis{{- end -}}
{{- define "kubedefender.tlsSecret" -}}{{ .Values.tls.secretName | default (printf "%s-tls" (include "kubedefender.fullname" .)) }}{{- end -}}
{{- define "kubedefender.policyConfigMap" -}}{{ .Values.policy.existingConfigMap | default (printf "%s-policy" (include "kubedefender.fullname" .)) }}{{- end -}}
{{- define "kubedefender.image" -}}{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}{{- end -}}

{{/* kubedefender.redisURL is the --redis-url, empty for the memory store. */}}
{{- define "kubedefender.redisURL" -}}
{{- if .Values.redis.enabled -}}
redis://{{ include "kubedefender.redisName" . }}.{{ .Release.Namespace }}.svc:6379/0
{{- else -}}
{{- .Values.redis.external.url -}}
{{- end -}}
{{- end -}}

{{/* kubedefender.redisPasswordSecret names the Secret holding the Redis password. */}}
{{- define "kubedefender.redisPasswordSecret" -}}
{{- if .Values.redis.enabled -}}{{ include "kubedefender.redisName" . }}{{- else -}}{{ .Values.redis.external.passwordSecret }}{{- end -}}
{{- end -}}

{{/* kubedefender.enabledByCRD: true when the value says so, or, for "auto",
when the API server serves the resource's group version. */}}
{{- define "kubedefender.enabledByCRD" -}}
{{- $v := index . 0 -}}{{- $ctx := index . 1 -}}{{- $api := index . 2 -}}
{{- if eq (toString $v) "auto" -}}{{ $ctx.Capabilities.APIVersions.Has $api }}{{- else -}}{{ $v }}{{- end -}}
{{- end -}}

{{/* Checks that no schema can express. */}}
{{- define "kubedefender.validate" -}}
{{- if and (gt (int .Values.replicas) 1) (not (include "kubedefender.redisURL" .)) -}}
{{- fail "replicas > 1 needs a shared store: set redis.enabled or redis.external.url (on the memory store each replica would count on its own, every limit multiplied)" -}}
{{- end -}}
{{- if and .Values.redis.enabled .Values.redis.external.url -}}
{{- fail "set one of redis.enabled and redis.external.url, not both" -}}
{{- end -}}
{{- if not .Values.policy.existingConfigMap -}}
{{- $p := fromYaml .Values.policy.inline -}}
{{- if hasKey $p "Error" -}}{{- fail (printf "policy.inline is not YAML: %s" $p.Error) -}}{{- end -}}
{{- $ns := dig "spec" "breakGlass" "namespace" "" $p | default "kubedefender-system" -}}{{- /* the policy's default (policy.DefaultBreakGlassNS) */ -}}
{{- if ne $ns .Release.Namespace -}}
{{- fail (printf "policy.inline: spec.breakGlass.namespace is %q, want the release namespace %q (Overrides are watched there)" $ns .Release.Namespace) -}}
{{- end -}}
{{- end -}}
{{- if and .Values.proxy.enabled (eq .Values.proxy.authMode "front-proxy") (not .Values.proxy.frontProxySecret) -}}
{{- fail "proxy.authMode front-proxy needs proxy.frontProxySecret (client-ca.crt, tls.crt, tls.key)" -}}
{{- end -}}
{{- if and (not .Values.webhook.enabled) (not (and .Values.proxy.enabled (eq .Values.proxy.budgetsAt "proxy"))) -}}
{{- fail "webhook.enabled false charges budgets nowhere: set proxy.enabled and proxy.budgetsAt: proxy" -}}
{{- end -}}
{{- if and .Values.webhook.enabled .Values.proxy.enabled (eq .Values.proxy.budgetsAt "proxy") -}}
{{- fail "proxy.budgetsAt proxy is for a deployment without the webhook: set webhook.enabled false (or budgetsAt webhook), or every delete is charged twice" -}}
{{- end -}}
{{- if and (eq .Values.tls.mode "existingSecret") (not .Values.tls.secretName) -}}
{{- fail "tls.mode existingSecret needs tls.secretName" -}}
{{- end -}}
{{- end -}}
