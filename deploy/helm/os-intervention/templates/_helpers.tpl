{{/* Names and labels shared by every object of the chart. */}}

{{- define "osi.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/* The services, in pipeline order; topology.yaml says what each uses. */}}
{{- define "osi.topology" -}}
{{- .Files.Get "files/topology.yaml" -}}
{{- end -}}

{{/* dict root, service -> <fullname>-<service> */}}
{{- define "osi.serviceName" -}}
{{- printf "%s-%s" (include "osi.fullname" .root) .service -}}
{{- end -}}

{{- define "osi.selectorLabels" -}}
app.kubernetes.io/name: {{ .root.Chart.Name }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .service }}
{{- end -}}

{{- define "osi.labels" -}}
{{ include "osi.selectorLabels" . }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/part-of: os-intervention
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version }}
{{- end -}}

{{/* The service's own Secret: keys, MongoDB URI, Kafka password, chat tokens. */}}
{{- define "osi.secretName" -}}
{{- $svc := index .root.Values.services .service -}}
{{- $svc.secret | default (include "osi.serviceName" .) -}}
{{- end -}}

{{- define "osi.kafkaUser" -}}
{{- printf "%s%s" .root.Values.kafka.sasl.usernamePrefix .service -}}
{{- end -}}

{{- define "osi.sasl" -}}
{{- if hasPrefix "SASL_" .Values.kafka.securityProtocol -}}true{{- end -}}
{{- end -}}

{{- define "osi.tls" -}}
{{- if and (has .Values.kafka.securityProtocol (list "SSL" "SASL_SSL")) .Values.kafka.tls.caSecret.name -}}true{{- end -}}
{{- end -}}

{{/* A Kubernetes object name for a topic: lower case, [a-z0-9.-]. */}}
{{- define "osi.topicObjectName" -}}
{{- . | lower | replace "_" "-" | trunc 253 | trimSuffix "-" | trimSuffix "." -}}
{{- end -}}

{{/* The partition ceiling of a consumer group's replicas. */}}
{{- define "osi.maxReplicas" -}}
{{- $svc := index .root.Values.services .service -}}
{{- min (int $svc.maxReplicas) (int .root.Values.kafka.partitions) -}}
{{- end -}}
