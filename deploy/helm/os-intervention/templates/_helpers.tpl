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

{{/* Refuse value combinations that would render a release that cannot start. */}}
{{- define "osi.validate" -}}
{{- $protocols := list "PLAINTEXT" "SSL" "SASL_PLAINTEXT" "SASL_SSL" -}}
{{- if not (has .Values.kafka.securityProtocol $protocols) -}}
{{- fail (printf "kafka.securityProtocol must be one of %s, not %q" (join ", " $protocols) .Values.kafka.securityProtocol) -}}
{{- end -}}
{{- if not (has .Values.kafka.sasl.passwordFrom (list "serviceSecret" "strimzi")) -}}
{{- fail (printf "kafka.sasl.passwordFrom must be serviceSecret or strimzi, not %q" .Values.kafka.sasl.passwordFrom) -}}
{{- end -}}
{{- if and (include "osi.sasl" .) (eq .Values.kafka.sasl.passwordFrom "strimzi") -}}
{{- if not .Values.strimzi.enabled -}}
{{- fail "kafka.sasl.passwordFrom=strimzi needs strimzi.enabled=true (the KafkaUsers' Secrets hold the passwords)" -}}
{{- end -}}
{{- if and .Values.strimzi.namespace (ne .Values.strimzi.namespace .Release.Namespace) -}}
{{- fail (printf "kafka.sasl.passwordFrom=strimzi: Strimzi writes each KafkaUser's password Secret in %q, which pods in %q cannot mount; install the release there, or copy the passwords into the services' Secrets (passwordFrom=serviceSecret)" .Values.strimzi.namespace .Release.Namespace) -}}
{{- end -}}
{{- end -}}
{{- if lt (int .Values.kafka.partitions) 1 -}}
{{- fail "kafka.partitions must be at least 1" -}}
{{- end -}}
{{- end -}}
