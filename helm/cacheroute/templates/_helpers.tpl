{{/*
Helpers. The RayService rendering mirrors serving/deploy/rayservice.py (render_rayservice)
and serving/deploy/serve_config.py (render_serve_config); change both together:
tests/unit/serving/deploy/test_helm.py compares them.
*/}}

{{- define "cacheroute.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "cacheroute.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "cacheroute.selectorLabels" -}}
app.kubernetes.io/name: {{ include "cacheroute.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "cacheroute.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "cacheroute.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: cacheroute
{{- end }}

{{/* Serve deployment name of the engines (serving.app.llm_deployment_name). */}}
{{- define "cacheroute.llmDeploymentName" -}}
{{- printf "LLMServer:%s" (.Values.config.model.id | replace "/" "--" | replace "." "_") }}
{{- end }}

{{/* Image with a pinned tag: the value, or <appVersion>-<device>. */}}
{{- define "cacheroute.image" -}}
{{- $tag := .Values.image.tag | default (printf "%s-%s" .Chart.AppVersion .Values.config.engine.device) }}
{{- if or (eq $tag "latest") (hasSuffix ":latest" $tag) }}
{{- fail "image.tag: pin a version, never 'latest'" }}
{{- end }}
{{- printf "%s:%s" .Values.image.repository $tag }}
{{- end }}

{{/* Cross-field checks the schema cannot express (the config's own validator too). */}}
{{- define "cacheroute.validate" -}}
{{- $c := .Values.config }}
{{- if and (eq $c.routing.policy "cacheroute") (not $c.engine.enable_prefix_caching) }}
{{- fail "config.routing.policy 'cacheroute' needs config.engine.enable_prefix_caching: true" }}
{{- end }}
{{- if and .Values.autoscaling.enabled (lt (int .Values.autoscaling.maxReplicas) (int $c.replicas)) }}
{{- fail (printf "autoscaling.maxReplicas (%d) is below config.replicas (%d)" (int .Values.autoscaling.maxReplicas) (int $c.replicas)) }}
{{- end }}
{{- if and .Values.secrets.metricsToken.secretName (not $c.server.metrics_token_env) }}
{{- fail "secrets.metricsToken.secretName needs config.server.metrics_token_env (the variable the token goes to)" }}
{{- end }}
{{- if and .Values.secrets.apiKeys.secretName (not $c.server.api_keys_env) }}
{{- fail "secrets.apiKeys.secretName needs config.server.api_keys_env (the variable the keys go to)" }}
{{- end }}
{{- end }}

{{/* The Serve config (serveConfigV2) as a dict; equals serving.deploy.serve_config.render_serve_config. */}}
{{- define "cacheroute.serveConfig" -}}
{{- $app := dict "name" "cacheroute" "route_prefix" "/" "import_path" "serving.app:app_builder" "args" (dict "config" .Values.config) }}
{{- if .Values.autoscaling.enabled }}
{{- $as := dict "min_replicas" .Values.config.replicas "max_replicas" .Values.autoscaling.maxReplicas "target_ongoing_requests" .Values.autoscaling.targetOngoingRequests }}
{{- $_ := set $app "deployments" (list (dict "name" (include "cacheroute.llmDeploymentName" .) "num_replicas" "auto" "autoscaling_config" $as)) }}
{{- end }}
{{- $serve := dict "http_options" (dict "host" "0.0.0.0" "port" .Values.config.server.port) "applications" (list $app) }}
{{- toYaml $serve }}
{{- end }}

{{/* Environment of every Ray container; secrets are referenced, never inlined. */}}
{{- define "cacheroute.env" -}}
- name: RAY_USAGE_STATS_ENABLED
  value: "0"
- name: VLLM_NO_USAGE_STATS
  value: "1"
- name: XDG_CACHE_HOME
  value: /cache
- name: HF_HOME
  value: /cache/huggingface
- name: VLLM_CACHE_ROOT
  value: /cache/vllm
- name: VLLM_CONFIG_ROOT
  value: /cache/vllm-config
- name: TRITON_CACHE_DIR
  value: /cache/triton
{{- with .Values.secrets.hfToken }}
{{- if .secretName }}
- name: HF_TOKEN
  valueFrom:
    secretKeyRef:
      name: {{ .secretName }}
      key: {{ .key }}
{{- end }}
{{- end }}
{{- if .Values.secrets.apiKeys.secretName }}
- name: {{ .Values.config.server.api_keys_env }}
  valueFrom:
    secretKeyRef:
      name: {{ .Values.secrets.apiKeys.secretName }}
      key: {{ .Values.secrets.apiKeys.key }}
{{- end }}
{{- if .Values.secrets.metricsToken.secretName }}
- name: {{ .Values.config.server.metrics_token_env }}
  valueFrom:
    secretKeyRef:
      name: {{ .Values.secrets.metricsToken.secretName }}
      key: {{ .Values.secrets.metricsToken.key }}
{{- end }}
{{- with .Values.ray.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "cacheroute.volumeMounts" -}}
- name: tmp
  mountPath: /tmp
- name: cache
  mountPath: /cache
- name: dshm
  mountPath: /dev/shm
{{- end }}

{{/* The claim at /cache (values.yaml `cache`): the user's, or the chart's own PVC;
empty when persistence is off. Mirrors render_rayservice's cache_claim. */}}
{{- define "cacheroute.cacheClaim" -}}
{{- with .Values.cache.persistence }}
{{- if .enabled }}
{{- .existingClaim | default (printf "%s-cache" (include "cacheroute.fullname" $)) }}
{{- end }}
{{- end }}
{{- end }}

{{- define "cacheroute.volumes" -}}
- name: tmp
  emptyDir: {}
- name: cache
{{- with include "cacheroute.cacheClaim" . }}
  persistentVolumeClaim:
    claimName: {{ . }}
{{- else }}
  emptyDir: {}
{{- end }}
- name: dshm
  emptyDir:
    medium: Memory
{{- end }}

{{/* Liveness of every Ray pod: the local raylet, via the dashboard agent. Not the
service's /health: that goes through Serve to one ingress replica, so one bad replica
would restart every pod. */}}
{{- define "cacheroute.livenessProbe" -}}
httpGet:
  path: /api/local_raylet_healthz
  port: 52365
initialDelaySeconds: 30
periodSeconds: 10
timeoutSeconds: 5
failureThreshold: 12
{{- end }}

{{/* Resources of one engine pod: the device profile plus nvidia.com/gpu on GPUs. */}}
{{- define "cacheroute.workerResources" -}}
{{- $gpu := eq .Values.config.engine.device "gpu" }}
{{- $res := deepCopy (ternary .Values.worker.gpuResources .Values.worker.cpuResources $gpu) }}
{{- if $gpu }}
{{- $n := .Values.config.engine.gpus_per_replica | int | toString }}
{{- if not (hasKey $res "requests") }}{{ $_ := set $res "requests" (dict) }}{{ end }}
{{- if not (hasKey $res "limits") }}{{ $_ := set $res "limits" (dict) }}{{ end }}
{{- $_ := set $res.requests "nvidia.com/gpu" $n }}
{{- $_ := set $res.limits "nvidia.com/gpu" $n }}
{{- end }}
{{- toYaml $res }}
{{- end }}

{{/* Ray start parameters of engine pods: one engine replica per pod. */}}
{{- define "cacheroute.workerRayStartParams" -}}
metrics-export-port: "8080"
{{- if eq .Values.config.engine.device "gpu" }}
num-gpus: {{ .Values.config.engine.gpus_per_replica | int | toString | quote }}
{{- else }}
num-cpus: {{ max 1 (ceil .Values.config.engine.cpus_per_replica | int) | toString | quote }}
{{- end }}
{{- end }}

{{/* The Ray pods' extra metadata and scheduling, shared by head and workers. */}}
{{- define "cacheroute.podCommon" -}}
{{- with .Values.serviceAccountName }}
serviceAccountName: {{ . }}
{{- end }}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
{{- range . }}
  - name: {{ . }}
{{- end }}
{{- end }}
securityContext:
  {{- toYaml .Values.podSecurityContext | nindent 2 }}
{{- end }}
