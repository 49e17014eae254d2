{{/*
Names, labels and the list of agentmesh node components every other
template ranges over.
*/}}

{{/* The chart's name, overridable with nameOverride. */}}
{{- define "agentmesh.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The release's object name prefix. Pod names of node StatefulSets are
`<fullname>-<component>-<ordinal>` and double as agent ids and etcd user
names, so the prefix is kept short (40 characters) to leave room for the
component and the ordinal within the 63 of a DNS label.
*/}}
{{- define "agentmesh.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* chart name and version, as the helm.sh/chart label. */}}
{{- define "agentmesh.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels on every object. */}}
{{- define "agentmesh.labels" -}}
helm.sh/chart: {{ include "agentmesh.chart" . }}
{{ include "agentmesh.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: agentmesh
{{- end }}

{{/* The labels that select the release's pods. */}}
{{- define "agentmesh.selectorLabels" -}}
app.kubernetes.io/name: {{ include "agentmesh.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* Selector labels of one component: (dict "root" $ "component" "coordinator"). */}}
{{- define "agentmesh.componentSelectorLabels" -}}
{{ include "agentmesh.selectorLabels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/* The node image, tag defaulting to the chart's appVersion. */}}
{{- define "agentmesh.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* Whether the chart runs its own etcd. */}}
{{- define "agentmesh.etcd.inChart" -}}
{{- if not .Values.etcd.external.endpoints }}true{{ end }}
{{- end }}

{{/* Whether the in-chart etcd speaks TLS (off only with security.insecure). */}}
{{- define "agentmesh.etcd.tls" -}}
{{- if and (include "agentmesh.etcd.inChart" .) (not .Values.security.insecure) }}true{{ end }}
{{- end }}

{{/* Whether nodes log in to etcd with a user of their own. */}}
{{- define "agentmesh.etcd.auth" -}}
{{- if and .Values.etcd.auth.enabled (not .Values.security.insecure) }}true{{ end }}
{{- end }}

{{/* The Secret holding etcd passwords (keys root, coordinator, worker, peer, level). */}}
{{- define "agentmesh.etcd.authSecret" -}}
{{- default (printf "%s-etcd-auth" (include "agentmesh.fullname" .)) .Values.etcd.auth.secretName }}
{{- end }}

{{/* The in-chart etcd's TLS Secret (ca.crt, tls.crt, tls.key). */}}
{{- define "agentmesh.etcd.tlsSecret" -}}
{{- default (printf "%s-etcd-tls" (include "agentmesh.fullname" .)) .Values.etcd.tls.secretName }}
{{- end }}

{{/* The Secret whose ca.crt nodes trust etcd's certificate with; empty for plain http. */}}
{{- define "agentmesh.etcd.caSecret" -}}
{{- if include "agentmesh.etcd.inChart" . }}
{{- if include "agentmesh.etcd.tls" . }}{{ include "agentmesh.etcd.tlsSecret" . }}{{ end }}
{{- else }}
{{- .Values.etcd.external.caSecret }}
{{- end }}
{{- end }}

{{/* Name of the in-chart etcd's governing (headless) Service. */}}
{{- define "agentmesh.etcd.headless" -}}
{{- printf "%s-etcd-headless" (include "agentmesh.fullname" .) }}
{{- end }}

{{/* etcd URL scheme of the in-chart etcd. */}}
{{- define "agentmesh.etcd.scheme" -}}
{{- if include "agentmesh.etcd.tls" . }}https{{ else }}http{{ end }}
{{- end }}

{{/*
The etcd client URLs nodes are given, comma-separated: every member of the
in-chart etcd by its stable DNS name, or etcd.external.endpoints.
*/}}
{{- define "agentmesh.etcd.endpoints" -}}
{{- if include "agentmesh.etcd.inChart" . }}
{{- $fullname := include "agentmesh.fullname" . }}
{{- $urls := list }}
{{- range $i := until (int .Values.etcd.replicas) }}
{{- $urls = append $urls (printf "%s://%s-etcd-%d.%s.%s.svc.%s:2379" (include "agentmesh.etcd.scheme" $) $fullname $i (include "agentmesh.etcd.headless" $) $.Release.Namespace $.Values.clusterDomain) }}
{{- end }}
{{- join "," $urls }}
{{- else }}
{{- join "," .Values.etcd.external.endpoints }}
{{- end }}
{{- end }}

{{/* The Secret of client tokens (key `tokens`). */}}
{{- define "agentmesh.tokensSecret" -}}
{{- default (printf "%s-tokens" (include "agentmesh.fullname" .)) .Values.tokens.secretName }}
{{- end }}

{{/* The coordinators' client Service. */}}
{{- define "agentmesh.clientService" -}}
{{- include "agentmesh.fullname" . }}
{{- end }}

{{/*
The node components, as YAML `components: [...]`: the coordinators, one
entry per worker pool (workers.defaults merged under each pool), the peers
and each hierarchy level with replicas. Each entry has:
  name         component name; pods are <fullname>-<name>-<ordinal>
  role, level  the node's --role and --level
  settings     the merged values of this component
  replicas     pods when not autoscaled
  maxReplicas  the most pods it may have: agent ids, etcd users and
               certificate names are made for this many
  autoscaled   whether an HPA or a KEDA ScaledObject sets the replicas
*/}}
{{- define "agentmesh.components" -}}
{{- $components := list }}
{{- $c := .Values.coordinator }}
{{- $components = append $components (dict "name" "coordinator" "role" "coordinator" "level" "" "settings" $c "replicas" (int $c.replicas) "maxReplicas" (int $c.replicas) "autoscaled" false) }}
{{- range $pool := .Values.workers.pools }}
{{- $s := mergeOverwrite (deepCopy $.Values.workers.defaults) (deepCopy $pool) }}
{{- $auto := and $s.autoscaling.enabled true }}
{{- $max := ternary (int $s.autoscaling.maxReplicas) (int $s.replicas) $auto }}
{{- $components = append $components (dict "name" (printf "worker-%s" $pool.name) "role" "worker" "level" "" "settings" $s "replicas" (int $s.replicas) "maxReplicas" $max "autoscaled" $auto) }}
{{- end }}
{{- if gt (int .Values.peers.replicas) 0 }}
{{- $components = append $components (dict "name" "peer" "role" "peer" "level" "" "settings" .Values.peers "replicas" (int .Values.peers.replicas) "maxReplicas" (int .Values.peers.replicas) "autoscaled" false) }}
{{- end }}
{{- range $level := list "strategic" "tactical" "operational" }}
{{- $s := get $.Values.levels $level }}
{{- if gt (int $s.replicas) 0 }}
{{- $components = append $components (dict "name" (printf "level-%s" $level) "role" "level" "level" $level "settings" $s "replicas" (int $s.replicas) "maxReplicas" (int $s.replicas) "autoscaled" false) }}
{{- end }}
{{- end }}
{{- toYaml (dict "components" $components) }}
{{- end }}

{{/* The node TLS Secret of a component: (dict "root" $ "component" $component). */}}
{{- define "agentmesh.tlsSecret" -}}
{{- default (printf "%s-%s-tls" (include "agentmesh.fullname" .root) .component.name) .root.Values.tls.secretName }}
{{- end }}

{{/*
Seconds a node pod is given to stop: the preStop pause (while endpoints
drop it), the drain of running subtasks, and a margin for the process to
exit after the drain.
*/}}
{{- define "agentmesh.terminationGracePeriod" -}}
{{- add (int .Values.node.preStopSleepSeconds) (int .Values.node.drainTimeoutSeconds) 10 }}
{{- end }}

{{/* HPA behavior: scale down one pod per period after the window. */}}
{{- define "agentmesh.scaleDownBehavior" -}}
scaleDown:
  stabilizationWindowSeconds: {{ .Values.autoscaling.scaleDown.stabilizationWindowSeconds }}
  policies:
    - type: Pods
      value: 1
      periodSeconds: {{ .Values.autoscaling.scaleDown.periodSeconds }}
{{- end }}
