{{/* The flags of each role beyond the shared ones (see "ragd.args.common"). */}}

{{- define "ragd.args.embedder" -}}
{{- $v := .Values -}}
- --models-dir={{ include "ragd.modelsDir" . }}
- --ort-library={{ $v.ortLibrary }}
{{- with $v.embedder.models }}
- --models={{ join "," . }}
{{- end }}
- --device={{ $v.embedder.device }}
- --workers={{ $v.embedder.workers }}
- --intra-threads={{ $v.embedder.intraThreads }}
{{- if not (kindIs "invalid" $v.embedder.maxBatchTokens) }}
- --max-batch-tokens={{ $v.embedder.maxBatchTokens }}
{{- end }}
- --max-queue-texts={{ $v.embedder.maxQueueTexts }}
{{- end -}}

{{- define "ragd.args.indexer" -}}
{{- $v := .Values -}}
- --data-dir=/data
- --embedder-url=etcd
{{- if $v.qdrant.url }}
- --store=qdrant
- --qdrant-url={{ $v.qdrant.url }}
- --qdrant-collection-prefix={{ $v.qdrant.collectionPrefix }}
- --qdrant-timeout-secs={{ $v.qdrant.timeoutSecs }}
{{- with $v.qdrant.restUrl }}
- --qdrant-rest-url={{ . }}
{{- end }}
{{- else }}
- --store=embedded
- --durability={{ $v.indexer.durability }}
- --exact-engine={{ $v.indexer.exactEngine }}
- --exact-precision={{ $v.indexer.exactPrecision }}
{{- end }}
- --max-k={{ $v.indexer.maxK }}
{{- with $v.indexer.reranker }}
{{- if .url }}
- --reranker-url={{ .url }}
- --reranker-api={{ .api }}
{{- with .model }}
- --reranker-model={{ . }}
{{- end }}
- --reranker-timeout-ms={{ .timeoutMs }}
{{- end }}
{{- end }}
{{- include "ragd.args.upstream" (dict "root" . "component" "indexer" "upstream" "embedder") }}
{{- end -}}

{{- define "ragd.args.generator" -}}
{{- $v := .Values -}}
{{- $g := $v.generator -}}
- --indexer-url=etcd
- --llm-model={{ include "ragd.modelsDir" . }}/{{ $g.llm.model }}
- --llm-context={{ $g.llm.context }}
- --llm-parallel={{ $g.llm.parallel }}
- --llm-threads={{ $g.llm.threads }}
{{- if $g.openai.url }}
- --openai-url={{ $g.openai.url }}
- --openai-model={{ $g.openai.model }}
- --openai-context={{ $g.openai.context }}
- --openai-concurrency={{ $g.openai.concurrency }}
{{- end }}
{{- with $g.defaultBackend }}
- --default-backend={{ . }}
{{- end }}
- --no-context={{ $g.noContext }}
- --generation-queue={{ $g.generationQueue }}
{{- include "ragd.args.upstream" (dict "root" . "component" "generator" "upstream" "indexer") }}
{{- end -}}

{{/* Extra env of a role: API keys of the stores and servers it calls, from Secrets. */}}
{{- define "ragd.env.indexer" -}}
{{- with .Values.qdrant.apiKeySecret.name }}
- name: RAGD_QDRANT_API_KEY
  valueFrom:
    secretKeyRef:
      name: {{ . }}
      key: {{ $.Values.qdrant.apiKeySecret.key }}
{{- end }}
{{- with .Values.indexer.reranker.apiKeySecret.name }}
- name: RAGD_RERANKER_API_KEY
  valueFrom:
    secretKeyRef:
      name: {{ . }}
      key: {{ $.Values.indexer.reranker.apiKeySecret.key }}
{{- end }}
{{- end -}}

{{- define "ragd.env.generator" -}}
{{- with .Values.generator.openai.apiKeySecret.name }}
- name: RAGD_OPENAI_API_KEY
  valueFrom:
    secretKeyRef:
      name: {{ . }}
      key: {{ $.Values.generator.openai.apiKeySecret.key }}
{{- end }}
{{- end -}}

{{/* Everything "ragd.pod" needs for a role. */}}
{{- define "ragd.podArgs" -}}
{{- $root := .root -}}
{{- $c := .component -}}
{{- $svc := dict "embedder" "ragd.v1.Embedder" "indexer" "ragd.v1.Indexer" "generator" "ragd.v1.Generator" -}}
{{- $models := or (eq $c "embedder") (eq $c "generator") -}}
{{- $env := "" -}}
{{- if eq $c "indexer" }}{{ $env = include "ragd.env.indexer" $root }}{{ end -}}
{{- if eq $c "generator" }}{{ $env = include "ragd.env.generator" $root }}{{ end -}}
{{- toYaml (dict "component" $c "service" (index $svc $c) "models" $models "args" (include (printf "ragd.args.%s" $c) $root) "env" $env) -}}
{{- end -}}
