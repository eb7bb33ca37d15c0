{{/*
Names, labels and the pieces every ragd workload shares. Each service's pod is built by
"ragd.pod" from its role's args ("ragd.args.<role>"), so listen ports, probes, security and
mounts are written once.
*/}}

{{- define "ragd.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "ragd.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "ragd.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Selector labels of one component: (dict "root" $ "component" "embedder"). Never changes
across upgrades: selectors are immutable. */}}
{{- define "ragd.selectorLabels" -}}
app.kubernetes.io/name: {{ include "ragd.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "ragd.labels" -}}
helm.sh/chart: {{ include "ragd.chart" .root }}
{{ include "ragd.selectorLabels" . }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
app.kubernetes.io/part-of: ragd
{{- with .root.Values.commonLabels }}
{{ toYaml . }}
{{- end -}}
{{- end -}}

{{/* <fullname>-<component> */}}
{{- define "ragd.componentName" -}}
{{- printf "%s-%s" (include "ragd.fullname" .root) .component | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "ragd.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "ragd.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "ragd.image" -}}
{{- $tag := default .Chart.AppVersion .Values.image.tag -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository $tag -}}
{{- end -}}
{{- end -}}

{{/* The in-cluster DNS name a service's certificate carries and its clients verify. */}}
{{- define "ragd.serviceHost" -}}
{{- printf "%s.%s.svc" (include "ragd.componentName" .) .root.Release.Namespace -}}
{{- end -}}

{{/* IPv6 listen addresses need brackets in host:port. */}}
{{- define "ragd.ipv6" -}}
{{- if contains ":" .Values.listenAddress }}true{{ end -}}
{{- end -}}

{{- define "ragd.hostPort" -}}
{{- if include "ragd.ipv6" .root -}}
{{- printf "[%s]:%v" .root.Values.listenAddress .port -}}
{{- else -}}
{{- printf "%s:%v" .root.Values.listenAddress .port -}}
{{- end -}}
{{- end -}}

{{- define "ragd.scheme" -}}
{{- if .Values.tls.enabled }}https{{ else }}http{{ end -}}
{{- end -}}

{{- define "ragd.tlsSecretName" -}}
{{- default (printf "%s-tls" (include "ragd.fullname" .)) .Values.tls.existingSecret -}}
{{- end -}}

{{- define "ragd.authSecretName" -}}
{{- default (printf "%s-auth" (include "ragd.fullname" .)) .Values.auth.existingSecret -}}
{{- end -}}

{{/* grpc or exec: kubelet's gRPC probe speaks plaintext without credentials. */}}
{{- define "ragd.probeMode" -}}
{{- if eq .Values.probes.mode "auto" -}}
{{- if or .Values.tls.enabled (and .Values.auth.enabled .Values.auth.health) }}exec{{ else }}grpc{{ end -}}
{{- else -}}
{{- .Values.probes.mode -}}
{{- end -}}
{{- end -}}

{{/* etcd client endpoints, comma-separated. */}}
{{- define "ragd.etcdEndpoints" -}}
{{- if .Values.etcd.enabled -}}
{{- $fn := include "ragd.fullname" . -}}
{{- $eps := list -}}
{{- range $i := until (int .Values.etcd.replicas) -}}
{{- $eps = append $eps (printf "http://%s-etcd-%d.%s-etcd-headless.%s.svc.%s:%v" $fn $i $fn $.Release.Namespace $.Values.clusterDomain $.Values.etcd.clientPort) -}}
{{- end -}}
{{- join "," $eps -}}
{{- else -}}
{{- join "," .Values.externalEtcd.endpoints -}}
{{- end -}}
{{- end -}}

{{/*
Refusals of values that would render a cluster that cannot work. Included by every workload.
*/}}
{{- define "ragd.validate" -}}
{{- $v := .Values -}}
{{- if gt (int $v.indexer.replicas) 1 -}}
{{- fail "indexer.replicas: more than one indexer is not supported yet: each indexer keeps its own collections registry (and, with the embedded store, its own shards) while the generator balances searches over every indexer, so replicas would answer from different data (docs/operations.md, \"Scaling\")" -}}
{{- end -}}
{{- if and (not $v.etcd.enabled) (not $v.externalEtcd.endpoints) -}}
{{- fail "etcd: with etcd.enabled=false set externalEtcd.endpoints (the services find each other through etcd)" -}}
{{- end -}}
{{- if and $v.externalEtcd.tls.enabled (not $v.externalEtcd.tls.secret) -}}
{{- fail "externalEtcd.tls.secret: name the Secret holding the etcd CA (and client certificate)" -}}
{{- end -}}
{{- if and $v.externalEtcd.user (not $v.externalEtcd.passwordSecret.name) -}}
{{- fail "externalEtcd.passwordSecret.name: externalEtcd.user needs its password from a Secret" -}}
{{- end -}}
{{- if and (eq $v.models.source "pvc") (not $v.models.pvc.existingClaim) -}}
{{- fail "models.pvc.existingClaim: models.source=pvc needs the claim holding the models" -}}
{{- end -}}
{{- if not $v.generator.llm.model -}}
{{- fail "generator.llm.model: `ragd serve generator` cannot run without its embedded model yet (it refuses an empty --llm-model and an empty RAGD_LLM_MODEL); keep a GGUF beside generator.openai.url" -}}
{{- end -}}
{{- if and $v.tls.mutual (not $v.tls.enabled) -}}
{{- fail "tls.mutual needs tls.enabled" -}}
{{- end -}}
{{- if and (or $v.auth.health $v.auth.metrics) (not $v.auth.enabled) -}}
{{- fail "auth.health and auth.metrics need auth.enabled" -}}
{{- end -}}
{{- if and (eq $v.probes.mode "grpc") (or $v.tls.enabled (and $v.auth.enabled $v.auth.health)) -}}
{{- fail "probes.mode=grpc cannot work with tls.enabled or auth.health: kubelet's gRPC probe speaks plaintext without a credential (use auto or exec)" -}}
{{- end -}}
{{- range $c := list "embedder" "indexer" "generator" -}}
{{- $grace := add (int $v.shutdown.graceSecs) (int $v.shutdown.preStopSleepSeconds) -}}
{{- if le (int (index $v $c).terminationGracePeriodSeconds) $grace -}}
{{- fail (printf "%s.terminationGracePeriodSeconds (%v) must exceed shutdown.preStopSleepSeconds + shutdown.graceSecs (%v), or the kubelet kills the pod mid-drain" $c (index $v $c).terminationGracePeriodSeconds $grace) -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/*
Generated secret material, made once per render and kept across upgrades (lookup finds the
Secrets of the release; `helm template` has no cluster, so it generates fresh ones each time).
Stored under .Values.__generated so the Secrets and the pods' checksum annotations agree.
*/}}
{{- define "ragd.generate" -}}
{{- if not (hasKey .Values "__generated") -}}
{{- $gen := dict -}}
{{- $fn := include "ragd.fullname" . -}}
{{- $ns := .Release.Namespace -}}
{{- if and .Values.tls.enabled (not .Values.tls.existingSecret) -}}
{{- $old := lookup "v1" "Secret" $ns (printf "%s-tls" $fn) -}}
{{- if and $old $old.data -}}
{{- $_ := set $gen "tls" $old.data -}}
{{- else -}}
{{- $names := list "localhost" -}}
{{- range $c := list "embedder" "indexer" "generator" -}}
{{- $svc := printf "%s-%s" $fn $c -}}
{{- $names = concat $names (list $svc (printf "%s.%s" $svc $ns) (printf "%s.%s.svc" $svc $ns) (printf "%s.%s.svc.%s" $svc $ns $.Values.clusterDomain)) -}}
{{- end -}}
{{- $names = append $names (printf "*.%s-indexer-headless.%s.svc.%s" $fn $ns .Values.clusterDomain) -}}
{{- $days := int .Values.tls.validityDays -}}
{{- $ca := genCA (printf "%s-ca" $fn) $days -}}
{{- $cert := genSignedCert $fn (list "127.0.0.1" "::1") $names $days $ca -}}
{{- $_ := set $gen "tls" (dict "tls.crt" ($cert.Cert | b64enc) "tls.key" ($cert.Key | b64enc) "ca.crt" ($ca.Cert | b64enc)) -}}
{{- end -}}
{{- end -}}
{{- if and .Values.auth.enabled (not .Values.auth.existingSecret) -}}
{{- $old := lookup "v1" "Secret" $ns (printf "%s-auth" $fn) -}}
{{- $keys := dict -}}
{{- range $k := list "admin" "indexer" "generator" "probe" "metrics" -}}
{{- $file := printf "%s.key" $k -}}
{{- if and $old $old.data (hasKey $old.data $file) -}}
{{- $_ := set $keys $k (index $old.data $file | b64dec) -}}
{{- else -}}
{{- $_ := set $keys $k (printf "ragd_%s" (randAlphaNum 43)) -}}
{{- end -}}
{{- end -}}
{{- $grants := dict
  "admin" (list (dict "collection" "*" "role" "manage") (dict "service" "embed") (dict "service" "generate") (dict "service" "metrics"))
  "indexer" (list (dict "service" "embed"))
  "generator" (list (dict "collection" "*" "role" "read"))
  "probe" (list)
  "metrics" (list (dict "service" "metrics")) -}}
{{- $entries := list -}}
{{- range $k := list "admin" "indexer" "generator" "probe" "metrics" -}}
{{- $entries = append $entries (dict "name" (printf "%s-%s" $fn $k) "sha256" (index $keys $k | sha256sum) "grants" (index $grants $k)) -}}
{{- end -}}
{{- range $e := .Values.auth.extraKeys -}}
{{- $entries = append $entries $e -}}
{{- end -}}
{{- $data := dict .Values.auth.keysFileName (dict "keys" $entries | toPrettyJson | b64enc) -}}
{{- range $k, $key := $keys -}}
{{- $_ := set $data (printf "%s.key" $k) ($key | b64enc) -}}
{{- end -}}
{{- $_ := set $gen "auth" $data -}}
{{- end -}}
{{- $_ := set .Values "__generated" $gen -}}
{{- end -}}
{{- end -}}

{{/* Pod annotations: checksums of the Secrets the chart writes (so their changes roll the pods),
Prometheus scrape hints, the user's. (dict "root" $ "component" "embedder") */}}
{{- define "ragd.podAnnotations" -}}
{{- $root := .root -}}
{{- include "ragd.generate" $root -}}
{{- $v := $root.Values -}}
{{- $cfg := dict "tls" $v.tls "auth" $v.auth "generated" $v.__generated "otel" $v.otel "etcd" $v.externalEtcd -}}
checksum/secrets: {{ toJson $cfg | sha256sum }}
{{- if and $v.metrics.enabled $v.metrics.podAnnotations }}
prometheus.io/scrape: "true"
prometheus.io/port: {{ $v.metrics.port | quote }}
prometheus.io/path: /metrics
prometheus.io/scheme: {{ include "ragd.scheme" $root }}
{{- end }}
{{- with (index $v .component).podAnnotations }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "ragd.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ .uid }}
runAsGroup: {{ .uid }}
fsGroup: {{ .uid }}
fsGroupChangePolicy: OnRootMismatch
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "ragd.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
capabilities:
  drop: [ALL]
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/* Flags of `ragd serve <role>` that every role shares: listener, discovery, etcd, shutdown,
metrics, TLS and access control. (dict "root" $ "component" "embedder") */}}
{{- define "ragd.args.common" -}}
{{- $root := .root -}}
{{- $v := $root.Values -}}
{{- $port := (index $v .component).port -}}
- --listen={{ include "ragd.hostPort" (dict "root" $root "port" $port) }}
{{- if include "ragd.ipv6" $root }}
- --advertise-addr={{ include "ragd.scheme" $root }}://[$(POD_IP)]:{{ $port }}
{{- else }}
- --advertise-addr={{ include "ragd.scheme" $root }}://$(POD_IP):{{ $port }}
{{- end }}
- --etcd-endpoints={{ include "ragd.etcdEndpoints" $root }}
- --cluster={{ $v.cluster.name }}
- --discovery-prefix={{ $v.cluster.discoveryPrefix }}
- --lease-ttl-secs={{ $v.cluster.leaseTtlSecs }}
{{- if and (not $v.etcd.enabled) $v.externalEtcd.user }}
- --etcd-user={{ $v.externalEtcd.user }}
{{- end }}
{{- if and (not $v.etcd.enabled) $v.externalEtcd.tls.enabled }}
- --etcd-tls-ca=/etc/ragd/etcd-tls/{{ $v.externalEtcd.tls.caKey }}
{{- if $v.externalEtcd.tls.clientCert }}
- --etcd-tls-cert=/etc/ragd/etcd-tls/{{ $v.externalEtcd.tls.certKey }}
- --etcd-tls-key=/etc/ragd/etcd-tls/{{ $v.externalEtcd.tls.keyKey }}
{{- end }}
{{- end }}
- --shutdown-grace-secs={{ $v.shutdown.graceSecs }}
{{- if $v.metrics.enabled }}
- --metrics-addr={{ include "ragd.hostPort" (dict "root" $root "port" $v.metrics.port) }}
{{- end }}
{{- if $v.tls.enabled }}
- --tls-cert=/etc/ragd/tls/tls.crt
- --tls-key=/etc/ragd/tls/tls.key
{{- if $v.tls.mutual }}
- --tls-client-ca=/etc/ragd/tls/ca.crt
{{- end }}
{{- end }}
{{- if $v.auth.enabled }}
- --auth-keys-file=/etc/ragd/auth/{{ $v.auth.keysFileName }}
{{- if $v.auth.jwksSecret }}
- --auth-jwks-file=/etc/ragd/jwks/jwks.json
{{- end }}
- --require-auth
{{- if $v.auth.health }}
- --auth-health
{{- end }}
{{- if $v.auth.metrics }}
- --metrics-auth
{{- end }}
{{- end }}
{{- end -}}

{{/* The client side of the indexer's and generator's upstream hop: TLS to (and the key for)
the service named by .upstream. */}}
{{- define "ragd.args.upstream" -}}
{{- $root := .root -}}
{{- $v := $root.Values -}}
{{- if $v.tls.enabled }}
- --upstream-tls-ca=/etc/ragd/tls/ca.crt
- --upstream-tls-server-name={{ include "ragd.serviceHost" (dict "root" $root "component" .upstream) }}
{{- if $v.tls.mutual }}
- --upstream-tls-cert=/etc/ragd/tls/tls.crt
- --upstream-tls-key=/etc/ragd/tls/tls.key
{{- end }}
{{- end }}
{{- if $v.auth.enabled }}
- --upstream-key-file=/etc/ragd/auth/{{ .component }}.key
{{- end }}
{{- end -}}

{{/* Environment of every ragd container: the pod IP for --advertise-addr, log filter, OTLP,
etcd password. */}}
{{- define "ragd.env" -}}
{{- $root := .root -}}
{{- $v := $root.Values -}}
- name: POD_IP
  valueFrom:
    fieldRef:
      fieldPath: status.podIP
- name: RUST_LOG
  value: {{ $v.log.level | quote }}
{{- if $v.otel.endpoint }}
- name: OTEL_EXPORTER_OTLP_ENDPOINT
  value: {{ $v.otel.endpoint | quote }}
{{- if $v.otel.caSecret.name }}
- name: OTEL_EXPORTER_OTLP_CERTIFICATE
  value: /etc/ragd/otel/{{ $v.otel.caSecret.key }}
{{- end }}
{{- end }}
{{- if and (not $v.etcd.enabled) $v.externalEtcd.user }}
- name: RAGD_ETCD_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ $v.externalEtcd.passwordSecret.name }}
      key: {{ $v.externalEtcd.passwordSecret.key }}
{{- end }}
{{- with (index $v .component).extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Probes on grpc.health.v1 of the role's own service name. */}}
{{- define "ragd.probe" -}}
{{- $root := .root -}}
{{- $v := $root.Values -}}
{{- $port := (index $v .component).port -}}
{{- if eq (include "ragd.probeMode" $root) "grpc" -}}
grpc:
  port: {{ $port }}
  service: {{ .service }}
{{- else -}}
{{- $host := ternary "[::1]" "127.0.0.1" (eq (include "ragd.ipv6" $root) "true") -}}
exec:
  command:
    - /usr/local/bin/ragd
    - health
    - --endpoint={{ include "ragd.scheme" $root }}://{{ $host }}:{{ $port }}
    - --service={{ .service }}
{{- if $v.tls.enabled }}
    - --upstream-tls-ca=/etc/ragd/tls/ca.crt
    - --upstream-tls-server-name={{ include "ragd.serviceHost" (dict "root" $root "component" .component) }}
{{- if $v.tls.mutual }}
    - --upstream-tls-cert=/etc/ragd/tls/tls.crt
    - --upstream-tls-key=/etc/ragd/tls/tls.key
{{- end }}
{{- end }}
{{- if and $v.auth.enabled $v.auth.health }}
    - --api-key-file=/etc/ragd/auth/probe.key
{{- end }}
{{- end }}
{{- end -}}

{{- define "ragd.probes" -}}
{{- $p := .root.Values.probes -}}
startupProbe:
  {{- include "ragd.probe" . | nindent 2 }}
  periodSeconds: {{ $p.startup.periodSeconds }}
  timeoutSeconds: {{ $p.startup.timeoutSeconds }}
  failureThreshold: {{ $p.startup.failureThreshold }}
readinessProbe:
  {{- include "ragd.probe" . | nindent 2 }}
  periodSeconds: {{ $p.readiness.periodSeconds }}
  timeoutSeconds: {{ $p.readiness.timeoutSeconds }}
  failureThreshold: {{ $p.readiness.failureThreshold }}
{{- if $p.liveness.enabled }}
livenessProbe:
  {{- include "ragd.probe" . | nindent 2 }}
  periodSeconds: {{ $p.liveness.periodSeconds }}
  timeoutSeconds: {{ $p.liveness.timeoutSeconds }}
  failureThreshold: {{ $p.liveness.failureThreshold }}
{{- end }}
{{- end -}}

{{/* Mounts of a ragd container; .models: whether the role reads the models. */}}
{{- define "ragd.volumeMounts" -}}
{{- $v := .root.Values -}}
- name: tmp
  mountPath: /tmp
{{- if .models }}
{{- if ne $v.models.source "image" }}
- name: models
  mountPath: {{ $v.models.mountPath }}
  readOnly: true
{{- if and (eq $v.models.source "pvc") $v.models.pvc.subPath }}
  subPath: {{ $v.models.pvc.subPath }}
{{- end }}
{{- end }}
{{- end }}
{{- if $v.tls.enabled }}
- name: tls
  mountPath: /etc/ragd/tls
  readOnly: true
{{- end }}
{{- if $v.auth.enabled }}
- name: auth
  mountPath: /etc/ragd/auth
  readOnly: true
{{- if $v.auth.jwksSecret }}
- name: jwks
  mountPath: /etc/ragd/jwks
  readOnly: true
{{- end }}
{{- end }}
{{- if and (not $v.etcd.enabled) $v.externalEtcd.tls.enabled }}
- name: etcd-tls
  mountPath: /etc/ragd/etcd-tls
  readOnly: true
{{- end }}
{{- if and $v.otel.endpoint $v.otel.caSecret.name }}
- name: otel-ca
  mountPath: /etc/ragd/otel
  readOnly: true
{{- end }}
{{- end -}}

{{/* Volumes of a ragd pod; the auth Secret is projected with only the files the role uses. */}}
{{- define "ragd.volumes" -}}
{{- $root := .root -}}
{{- $v := $root.Values -}}
- name: tmp
  emptyDir:
    sizeLimit: 256Mi
{{- if .models }}
{{- if eq $v.models.source "init" }}
- name: models
  emptyDir:
    sizeLimit: {{ $v.models.init.sizeLimit }}
{{- else if eq $v.models.source "pvc" }}
- name: models
  persistentVolumeClaim:
    claimName: {{ $v.models.pvc.existingClaim }}
    readOnly: true
{{- end }}
{{- end }}
{{- if $v.tls.enabled }}
- name: tls
  secret:
    secretName: {{ include "ragd.tlsSecretName" $root }}
    defaultMode: 0440
    items:
      - {key: tls.crt, path: tls.crt}
      - {key: tls.key, path: tls.key}
      - {key: ca.crt, path: ca.crt}
{{- end }}
{{- if $v.auth.enabled }}
- name: auth
  secret:
    secretName: {{ include "ragd.authSecretName" $root }}
    defaultMode: 0440
    items:
      - {key: {{ $v.auth.keysFileName }}, path: {{ $v.auth.keysFileName }}}
{{- if ne .component "embedder" }}
      - {key: {{ .component }}.key, path: {{ .component }}.key}
{{- end }}
{{- if $v.auth.health }}
      - {key: probe.key, path: probe.key}
{{- end }}
{{- if $v.auth.jwksSecret }}
- name: jwks
  secret:
    secretName: {{ $v.auth.jwksSecret }}
    defaultMode: 0440
    items:
      - {key: jwks.json, path: jwks.json}
{{- end }}
{{- end }}
{{- if and (not $v.etcd.enabled) $v.externalEtcd.tls.enabled }}
- name: etcd-tls
  secret:
    secretName: {{ $v.externalEtcd.tls.secret }}
    defaultMode: 0440
{{- end }}
{{- if and $v.otel.endpoint $v.otel.caSecret.name }}
- name: otel-ca
  secret:
    secretName: {{ $v.otel.caSecret.name }}
    defaultMode: 0440
{{- end }}
{{- end -}}

{{/* The models directory the services read. */}}
{{- define "ragd.modelsDir" -}}
{{- if eq .Values.models.source "image" }}{{ .Values.models.imagePath }}{{ else }}{{ .Values.models.mountPath }}{{ end -}}
{{- end -}}

{{/* The init container that copies the models a role needs into the pod's emptyDir. */}}
{{- define "ragd.modelsInit" -}}
{{- $root := .root -}}
{{- $v := $root.Values -}}
{{- $m := $v.models.init -}}
{{- $repo := default $v.image.repository $m.image.repository -}}
{{- $tag := default (printf "%s-fat" (default $root.Chart.AppVersion $v.image.tag)) $m.image.tag -}}
- name: models
  image: {{ printf "%s:%s" $repo $tag | quote }}
  imagePullPolicy: {{ $m.image.pullPolicy }}
  {{- if $m.command }}
  command:
    {{- toYaml $m.command | nindent 4 }}
  {{- else }}
  command: [/usr/local/bin/ragd]
  args:
    - install-models
    - --from={{ $m.sourcePath }}
    - --to=/mnt/models
    {{- if and (eq .component "embedder") $v.embedder.models }}
    - --models={{ join "," $v.embedder.models }}
    {{- end }}
    {{- if eq .component "generator" }}
    - --include={{ dir $v.generator.llm.model }}
    {{- end }}
  {{- end }}
  securityContext:
    {{- include "ragd.containerSecurityContext" . | nindent 4 }}
  resources:
    {{- toYaml $m.resources | nindent 4 }}
  # Not at sourcePath, which would hide the image's own copy.
  volumeMounts:
    - name: models
      mountPath: /mnt/models
{{- end -}}

{{/*
The pod template of a ragd service. (dict "root" $ "component" "embedder" "service"
"ragd.v1.Embedder" "args" <its role args> "models" true "extraVolumes" <yaml> "extraMounts" <yaml>)
*/}}
{{- define "ragd.pod" -}}
{{- $root := .root -}}
{{- $v := $root.Values -}}
{{- $c := index $v .component -}}
metadata:
  labels:
    {{- include "ragd.labels" . | nindent 4 }}
    {{- with $c.podLabels }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  annotations:
    {{- include "ragd.podAnnotations" . | nindent 4 }}
spec:
  serviceAccountName: {{ include "ragd.serviceAccountName" $root }}
  automountServiceAccountToken: {{ $v.serviceAccount.automountServiceAccountToken }}
  # RAGD_* variables are read as flags: keep Kubernetes' service links (RAGD_EMBEDDER_PORT=...)
  # out of the environment.
  enableServiceLinks: false
  terminationGracePeriodSeconds: {{ $c.terminationGracePeriodSeconds }}
  {{- with $v.imagePullSecrets }}
  imagePullSecrets:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $c.priorityClassName }}
  priorityClassName: {{ . }}
  {{- end }}
  securityContext:
    {{- include "ragd.podSecurityContext" (dict "uid" 10001) | nindent 4 }}
  {{- if and .models (eq $v.models.source "init") }}
  initContainers:
    {{- include "ragd.modelsInit" . | nindent 4 }}
  {{- end }}
  containers:
    - name: {{ .component }}
      image: {{ include "ragd.image" $root | quote }}
      imagePullPolicy: {{ $v.image.pullPolicy }}
      command: [/usr/local/bin/ragd]
      args:
        {{- if $v.log.json }}
        - --log-json
        {{- end }}
        - serve
        - {{ .component }}
        {{- include "ragd.args.common" . | nindent 8 }}
        {{- .args | nindent 8 }}
        {{- with $c.extraArgs }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      env:
        {{- include "ragd.env" . | nindent 8 }}
        {{- with .env }}
        {{- . | nindent 8 }}
        {{- end }}
      ports:
        - name: grpc
          containerPort: {{ $c.port }}
          protocol: TCP
        {{- if $v.metrics.enabled }}
        - name: metrics
          containerPort: {{ $v.metrics.port }}
          protocol: TCP
        {{- end }}
      {{- include "ragd.probes" . | nindent 6 }}
      {{- if $v.shutdown.preStopSleepSeconds }}
      lifecycle:
        preStop:
          sleep:
            seconds: {{ $v.shutdown.preStopSleepSeconds }}
      {{- end }}
      securityContext:
        {{- include "ragd.containerSecurityContext" . | nindent 8 }}
      resources:
        {{- toYaml $c.resources | nindent 8 }}
      volumeMounts:
        {{- include "ragd.volumeMounts" . | nindent 8 }}
        {{- with .extraMounts }}
        {{- . | nindent 8 }}
        {{- end }}
  volumes:
    {{- include "ragd.volumes" . | nindent 4 }}
    {{- with .extraVolumes }}
    {{- . | nindent 4 }}
    {{- end }}
  {{- with $c.nodeSelector }}
  nodeSelector:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $c.tolerations }}
  tolerations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- if $c.affinity }}
  affinity:
    {{- toYaml $c.affinity | nindent 4 }}
  {{- else }}
  affinity:
    podAntiAffinity:
      preferredDuringSchedulingIgnoredDuringExecution:
        - weight: 100
          podAffinityTerm:
            topologyKey: kubernetes.io/hostname
            labelSelector:
              matchLabels:
                {{- include "ragd.selectorLabels" . | nindent 16 }}
  {{- end }}
  {{- with $c.topologySpreadConstraints }}
  topologySpreadConstraints:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end -}}
