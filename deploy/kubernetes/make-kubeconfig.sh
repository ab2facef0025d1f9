#!/usr/bin/env bash
# Builds the Pi's kubeconfig from the backuphub ServiceAccount's token Secret
# (deploy/kubernetes/rbac.yaml). Run where kubectl reaches the cluster as an admin:
#
#   bash deploy/kubernetes/make-kubeconfig.sh https://10.0.0.10:6443 > backuphub-kubeconfig
#
# then copy the file to the Pi (say /etc/secrets/backuphub-kubeconfig, mode 0400) and pass
# it to the service as a credential. The file holds a bearer token: treat it as a secret.
set -euo pipefail
server=${1:?usage: make-kubeconfig.sh https://API-SERVER:6443}
ns=backuphub
secret=backuphub-token
token=$(kubectl -n "$ns" get secret "$secret" -o jsonpath='{.data.token}' | base64 -d)
ca=$(kubectl -n "$ns" get secret "$secret" -o jsonpath='{.data.ca\.crt}')
[ -n "$token" ] && [ -n "$ca" ] || { echo "the token Secret is not filled in yet; wait and retry" >&2; exit 1; }
cat <<YAML
apiVersion: v1
kind: Config
clusters:
  - name: homelab
    cluster:
      server: $server
      certificate-authority-data: $ca
users:
  - name: backuphub
    user:
      token: $token
contexts:
  - name: homelab
    context:
      cluster: homelab
      user: backuphub
current-context: homelab
YAML
