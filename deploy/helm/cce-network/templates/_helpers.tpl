{{/* Names ------------------------------------------------------------------------------------------------ */}}

{{- define "cce.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The release's prefix of every object: the release name when it already says cce-network. */}}
{{- define "cce.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" -}}
{{- else if contains (include "cce.name" .) .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name (include "cce.name" .) | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "cce.labels" -}}
app.kubernetes.io/name: {{ include "cce.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/part-of: cce-network
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{/* Selector labels of one component: (dict "root" $ "component" "ipam") */}}
{{- define "cce.selector" -}}
app.kubernetes.io/name: {{ include "cce.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "cce.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{- define "cce.natsService" -}}
{{- printf "%s-nats" (include "cce.fullname" .) -}}
{{- end -}}

{{- define "cce.natsHeadless" -}}
{{- printf "%s-nats-headless" (include "cce.fullname" .) -}}
{{- end -}}

{{- define "cce.cloudSecret" -}}
{{- if .Values.cloud.credentials.create -}}
{{- printf "%s-cloud" (include "cce.fullname" .) -}}
{{- else -}}
{{- .Values.cloud.credentials.existingSecret -}}
{{- end -}}
{{- end -}}

{{- define "cce.routeManagerEnabled" -}}
{{- if kindIs "bool" .Values.routeManager.enabled -}}
{{- ternary "true" "" .Values.routeManager.enabled -}}
{{- else -}}
{{- ternary "true" "" (eq .Values.mode "vpc-route") -}}
{{- end -}}
{{- end -}}

{{/* Checks no schema can make -------------------------------------------------------------------------------- */}}

{{- define "cce.validate" -}}
{{- $modes := list "vpc-eni" "vpc-eni-primary" "vpc-eni-exclusive" "vpc-route" -}}
{{- if not (has .Values.mode $modes) -}}
{{- fail (printf "mode %q is not a cce-network mode: use one of %s" (toString .Values.mode) (join ", " $modes)) -}}
{{- end -}}
{{- if not .Values.cloud.endpoint -}}
{{- fail "cloud.endpoint is required: the BCE API endpoint of the cluster's region (e.g. bcc.bj.baidubce.com), or the simulator's URL" -}}
{{- end -}}
{{- $cred := .Values.cloud.credentials -}}
{{- if $cred.create -}}
{{- if not $cred.accessKey -}}
{{- fail "cloud.credentials.accessKey is required with cloud.credentials.create: true (the Secret's key access-key)" -}}
{{- end -}}
{{- if not $cred.secretKey -}}
{{- fail "cloud.credentials.secretKey is required with cloud.credentials.create: true (the Secret's key secret-key)" -}}
{{- end -}}
{{- else if not $cred.existingSecret -}}
{{- fail "cloud credentials are required: set cloud.credentials.existingSecret to a Secret with the keys access-key and secret-key, or cloud.credentials.create: true with accessKey and secretKey" -}}
{{- else -}}
{{- /* at install and upgrade time (not in `helm template`), a Secret that is there must hold both keys */ -}}
{{- $secret := lookup "v1" "Secret" .Release.Namespace $cred.existingSecret -}}
{{- if $secret -}}
{{- range $key := list "access-key" "secret-key" -}}
{{- if not (hasKey (default dict $secret.data) $key) -}}
{{- fail (printf "the Secret %s/%s has no key %s (cloud.credentials.existingSecret needs access-key and secret-key)" $secret.metadata.namespace $secret.metadata.name $key) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- if and (eq .Values.mode "vpc-route") (not .Values.network.routeMode.clusterCIDRs) -}}
{{- fail "network.routeMode.clusterCIDRs is required in vpc-route mode: the container CIDR blocks (not overlapping the VPC)" -}}
{{- end -}}
{{- if and (not .Values.nats.enabled) (not .Values.nats.url) -}}
{{- fail "nats.url is required with nats.enabled: false: the URL(s) of the NATS JetStream cluster to use" -}}
{{- end -}}
{{- if and .Values.nats.enabled (gt (int .Values.bus.kvReplicas) (int .Values.nats.replicas)) -}}
{{- fail (printf "bus.kvReplicas (%v) cannot exceed nats.replicas (%v): a stream has at most one replica per server" .Values.bus.kvReplicas .Values.nats.replicas) -}}
{{- end -}}
{{- if and .Values.nats.auth.enabled .Values.nats.enabled -}}
{{- fail "nats.auth.enabled needs nats.enabled: false and nats.url naming a NATS server configured for per-identity credentials: the chart's own NATS has no accounts yet (README.md, \"Bus credentials\")" -}}
{{- end -}}
{{- end -}}

{{/* Environment ------------------------------------------------------------------------------------------------ */}}

{{/* The bus URL: the chart's NATS through its client Service's address from the service environment variables
     (kubelet sets them for Services made before the pod, and Helm makes Services first), so no cluster DNS is
     needed; or nats.url. */}}
{{- define "cce.natsUrl" -}}
{{- if .Values.nats.url -}}
{{- .Values.nats.url -}}
{{- else -}}
{{- $svc := include "cce.natsService" . | upper | replace "-" "_" -}}
{{- printf "nats://$(%s_SERVICE_HOST):$(%s_SERVICE_PORT_CLIENT)" $svc $svc -}}
{{- end -}}
{{- end -}}

{{/* What every service process reads (chassis/config.py): (dict "root" $ "port" 9891 "identity" "ipam") */}}
{{- define "cce.env.chassis" -}}
{{- $root := .root -}}
- name: CCE_NATS_URL
  value: {{ include "cce.natsUrl" $root | quote }}
- name: CCE_KV_REPLICAS
  value: {{ $root.Values.bus.kvReplicas | quote }}
- name: CCE_SERVICE_ID
  valueFrom:
    fieldRef:
      fieldPath: metadata.name
- name: CCE_HTTP_HOST
  value: "0.0.0.0"
- name: CCE_HTTP_PORT
  value: {{ .port | quote }}
- name: CCE_LOG_LEVEL
  value: {{ $root.Values.logLevel | quote }}
- name: CCE_LOG_JSON
  value: "true"
{{- if $root.Values.nats.auth.enabled }}
- name: CCE_NATS_CREDS
  value: {{ printf "%s/%s.creds" $root.Values.nats.auth.mountPath .identity | quote }}
{{- end }}
{{- if $root.Values.nats.tls.caSecret }}
- name: CCE_NATS_TLS_CA
  value: /etc/cce/nats-tls/ca.crt
{{- end }}
{{- end -}}

{{/* The bus credentials and CA of one identity: (dict "root" $ "identity" "eni-manager" "key" "eniManager");
     identity "node": the node's own credentials file, from the host. */}}
{{- define "cce.busMounts" -}}
{{- if .root.Values.nats.auth.enabled }}
- name: nats-credentials
  {{- /* a Secret as a directory (renewed credentials reach the file); the node's own file as that file */}}
  mountPath: {{ ternary (printf "%s/node.creds" .root.Values.nats.auth.mountPath) .root.Values.nats.auth.mountPath (eq .identity "node") }}
  readOnly: true
{{- end }}
{{- if .root.Values.nats.tls.caSecret }}
- name: nats-tls
  mountPath: /etc/cce/nats-tls
  readOnly: true
{{- end }}
{{- end -}}

{{- define "cce.busVolumes" -}}
{{- $auth := .root.Values.nats.auth -}}
{{- if and $auth.enabled (eq .identity "node") }}
- name: nats-credentials
  hostPath:
    path: {{ $auth.nodeCredentialsFile }}
    type: File
{{- else if $auth.enabled }}
- name: nats-credentials
  secret:
    secretName: {{ include "cce.natsCredsSecret" . }}
    defaultMode: 0440
    items:
      - key: creds
        path: {{ .identity }}.creds
{{- end }}
{{- if .root.Values.nats.tls.caSecret }}
- name: nats-tls
  secret:
    secretName: {{ .root.Values.nats.tls.caSecret }}
    defaultMode: 0444
    items:
      - key: ca.crt
        path: ca.crt
{{- end }}
{{- end -}}

{{/* The cloud adapter's settings (cloud/bce.py BceSettings). The adapter reads the keys from the environment;
     the same Secret is mounted as files too (cloud.credentials.mountPath). */}}
{{- define "cce.env.cloud" -}}
- name: CCE_CLOUD_ENDPOINT
  value: {{ .Values.cloud.endpoint | quote }}
- name: CCE_CLOUD_REGION
  value: {{ .Values.cloud.region | quote }}
{{- if .Values.cloud.vpcId }}
- name: CCE_CLOUD_VPC_ID
  value: {{ .Values.cloud.vpcId | quote }}
{{- end }}
{{- if .Values.cloud.rateLimits }}
- name: CCE_CLOUD_RATE_LIMITS
  value: {{ toJson .Values.cloud.rateLimits | quote }}
{{- end }}
- name: CCE_CLOUD_ACCESS_KEY
  valueFrom:
    secretKeyRef:
      name: {{ include "cce.cloudSecret" . }}
      key: access-key
- name: CCE_CLOUD_SECRET_KEY
  valueFrom:
    secretKeyRef:
      name: {{ include "cce.cloudSecret" . }}
      key: secret-key
{{- end -}}

{{/* A component's extra settings: (its values).env, a map of CCE_* names to values */}}
{{- define "cce.env.extra" -}}
{{- range $name, $value := . }}
- name: {{ $name }}
  value: {{ $value | toString | quote }}
{{- end }}
{{- end -}}

{{/* The watermarks as the JSON of schemas/records.py PoolSettings (k8s_bridge's CCE_DEFAULT_POOL) */}}
{{- define "cce.poolJson" -}}
{{- $p := .Values.network.pool -}}
{{- $fields := dict "preAllocate" "pre_allocate" "minAllocate" "min_allocate" "maxAboveWatermark" "max_above_watermark" "maxAllocate" "max_allocate" "burstable" "burstable" "releaseExcess" "release_excess" "releaseDelayS" "release_delay_s" "cooldownS" "cooldown_s" "eniCooldownS" "eni_cooldown_s" "eniReleaseAfterS" "eni_release_after_s" -}}
{{- $out := dict -}}
{{- range $key, $value := $p -}}
{{- if not (hasKey $fields $key) -}}
{{- fail (printf "network.pool.%s is not a pool setting: use %s" $key (keys $fields | sortAlpha | join ", ")) -}}
{{- end -}}
{{- $_ := set $out (get $fields $key) $value -}}
{{- end -}}
{{- toJson $out -}}
{{- end -}}

{{/* Pod parts ------------------------------------------------------------------------------------------------- */}}

{{- define "cce.probes" -}}
startupProbe:
  httpGet:
    path: /livez
    port: http
  periodSeconds: 2
  failureThreshold: 60
livenessProbe:
  httpGet:
    path: /livez
    port: http
  periodSeconds: 10
  timeoutSeconds: 3
  failureThreshold: 3
readinessProbe:
  httpGet:
    path: /readyz
    port: http
  periodSeconds: 5
  timeoutSeconds: 3
  failureThreshold: 2
{{- end -}}

{{/* Prefer another node than a sibling's: (dict "root" $ "component" "ipam") */}}
{{- define "cce.antiAffinity" -}}
podAntiAffinity:
  preferredDuringSchedulingIgnoredDuringExecution:
    - weight: 100
      podAffinityTerm:
        topologyKey: kubernetes.io/hostname
        labelSelector:
          matchLabels:
            {{- include "cce.selector" . | nindent 12 }}
{{- end -}}

{{- define "cce.restrictedContainer" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop: ["ALL"]
{{- end -}}

{{/* The bus credentials Secret of one identity: (dict "root" $ "identity" "ipam" "key" "ipam") */}}
{{- define "cce.natsCredsSecret" -}}
{{- $given := get .root.Values.nats.auth.credentialsSecrets .key -}}
{{- default (printf "%s-nats-%s" (include "cce.fullname" .root) .identity) $given -}}
{{- end -}}
