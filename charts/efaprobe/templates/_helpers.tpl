{{/*
Labels: the same as the kustomize manifests render (scripts/check-manifests.sh compares them),
so a cluster moved from one to the other sees the same objects. No Helm-specific labels: Helm
tracks its objects by its own annotations.
*/}}
{{- define "efaprobe.labels" -}}
app.kubernetes.io/name: efaprobe
app.kubernetes.io/part-of: efaprobe
{{- end }}

{{/* The fabric provider, validated: "", efa or none. */}}
{{- define "efaprobe.provider" -}}
{{- $p := .Values.fabric.provider | toString -}}
{{- if not (has $p (list "" "efa" "none")) -}}
{{- fail (printf "fabric.provider: %q is not one of \"\", efa, none" $p) -}}
{{- end -}}
{{- $p -}}
{{- end }}

{{/* The EFA device access, validated (only read with provider efa). */}}
{{- define "efaprobe.deviceAccess" -}}
{{- $d := .Values.fabric.deviceAccess | toString -}}
{{- if not (has $d (list "hostMount" "deviceResource")) -}}
{{- fail (printf "fabric.deviceAccess: %q is not one of hostMount, deviceResource" $d) -}}
{{- end -}}
{{- $d -}}
{{- end }}

{{/*
The Pod Security level the pod needs: privileged for the EFA device (privileged container or
IPC_LOCK, hostPath) or host networking, else restricted (the base passes it).
*/}}
{{- define "efaprobe.podSecurity" -}}
{{- if or (eq (include "efaprobe.provider" .) "efa") .Values.hostNetwork -}}
privileged
{{- else -}}
restricted
{{- end -}}
{{- end }}

{{/* Whether node action `name` (condition, events, startupTaintGate) is on: "true" or "". Its
value when set; empty follows the provider, on with efa, as the EFA overlay includes
components/node-actions. */}}
{{- define "efaprobe.nodeAction" -}}
{{- $v := index .root.Values.nodeActions .name | toString -}}
{{- if eq $v "" -}}
{{- if eq (include "efaprobe.provider" .root) "efa" -}}true{{- end -}}
{{- else if eq $v "true" -}}
true
{{- else if ne $v "false" -}}
{{- fail (printf "nodeActions.%s: %q is not true, false or empty" .name $v) -}}
{{- end -}}
{{- end }}
