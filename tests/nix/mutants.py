"""Deliberate mistakes in module.nix (or nix/module.md) that tests/nix/eval.nix must catch.

Each mutant is a copy of module.nix next to a copy of nix/module.md (the module's meta.doc),
with one text replaced; eval.nix evaluated with `--arg modulePath DIR/module.nix` must fail,
naming each of the mutant's expectations as failed. run.sh does that for every mutant: an
expectation that no mutant fails has not been shown to be able to fail.

    python3 tests/nix/mutants.py ROOT OUTDIR

writes OUTDIR/<n>/module.nix, OUTDIR/<n>/nix/module.md and OUTDIR/<n>/expect (the names of the
expectations that must fail, one a line). Exits non-zero when a text does not occur exactly
once in its file (the module changed: update the mutant).
"""

import os
import sys

MODULE = "module.nix"
DOC = "nix/module.md"

# (expectations of eval.nix that must fail, file, text, replacement)
MUTANTS = [
    # ---- kubernetes jobs: assertions (the connection's are volume jobs' too: kubeConnectionAssertions)
    (
        ["assertion: k8s-no-connection", "assertion: vol-no-connection"],
        MODULE,
        "assertion = hasKubeconfig || (hasServer && hasToken);",
        "assertion = true;",
    ),
    (
        [
            "assertion: k8s-server-without-token",
            "assertion: k8s-server-without-token-says-so",
            "assertion: vol-server-without-token",
        ],
        MODULE,
        "assertion = hasKubeconfig || (hasServer && hasToken);",
        "assertion = hasKubeconfig || hasServer;",
    ),
    (
        ["assertion: k8s-token-without-server", "assertion: vol-token-without-server"],
        MODULE,
        "assertion = hasKubeconfig || (hasServer && hasToken);",
        "assertion = hasKubeconfig || hasToken;",
    ),
    (
        ["assertion: k8s-server-without-token-says-so"],
        MODULE,
        'if hasServer then\n            "; `token_file` is missing"',
        'if hasServer then\n            ""',
    ),
    (
        ["assertion: k8s-token-without-server"],
        MODULE,
        'else if hasToken then\n            "; `server` is missing"',
        'else if hasToken then\n            ""',
    ),
    (
        [
            "assertion: k8s-kubeconfig-and-token",
            "assertion: k8s-kubeconfig-and-server",
            "assertion: vol-kubeconfig-and-server",
        ],
        MODULE,
        "assertion = !(hasKubeconfig && (hasServer || hasToken));",
        "assertion = true;",
    ),
    (
        ["assertion: k8s-kubeconfig-and-token"],
        MODULE,
        "assertion = !(hasKubeconfig && (hasServer || hasToken));",
        "assertion = !(hasKubeconfig && hasServer);",
    ),
    (
        ["assertion: k8s-server-scheme", "assertion: vol-server-scheme"],
        MODULE,
        '|| (lib.isString server && (lib.hasPrefix "https://" server || lib.hasPrefix "http://" server));',
        "|| lib.isString server;",
    ),
    (
        ["assertion: k8s-server-scheme-case"],
        MODULE,
        '(lib.hasPrefix "https://" server || lib.hasPrefix "http://" server)',
        '(lib.hasPrefix "https://" (lib.toLower server) || lib.hasPrefix "http://" (lib.toLower server))',
    ),
    (
        ["kubernetes: accepted: server over http:// (kubectl proxy)", "volume: accepted: server over http:// (kubectl proxy)"],
        MODULE,
        '(lib.hasPrefix "https://" server || lib.hasPrefix "http://" server)',
        '(lib.hasPrefix "https://" server)',
    ),
    (
        [
            "assertion: k8s-ca-with-kubeconfig",
            "assertion: vol-ca-with-kubeconfig",
            "kubernetes: a ca_file beside a kubeconfig fails one assertion, and warns of nothing",
            "volume: a ca_file beside a kubeconfig fails one assertion, and warns of nothing",
        ],
        MODULE,
        "assertion = !(hasKubeconfig && ca != null);",
        "assertion = true;",
    ),
    (
        ["assertion: k8s-ca-with-kubeconfig", "kubernetes: a ca_file beside a kubeconfig fails one assertion, and warns of nothing"],
        MODULE,
        "assertion = !(hasKubeconfig && ca != null);",
        'assertion = !(hasKubeconfig && ca != null) || job.kind == "kubernetes";',
    ),
    (
        ["assertion: vol-ca-with-kubeconfig", "volume: a ca_file beside a kubeconfig fails one assertion, and warns of nothing"],
        MODULE,
        "assertion = !(hasKubeconfig && ca != null);",
        'assertion = !(hasKubeconfig && ca != null) || job.kind == "volume";',
    ),
    (
        ["assertion: k8s-context-without-kubeconfig", "assertion: vol-context-without-kubeconfig"],
        MODULE,
        "assertion = (job.context or null) == null || hasKubeconfig;",
        "assertion = true;",
    ),
    (
        ["assertion: k8s-secrets-unencrypted", "assertion: k8s-secrets-no-recipients"],
        MODULE,
        'lib.elem "secrets" includeResources) || settingsEncrypt;',
        'lib.elem "secrets" includeResources) || true;',
    ),
    (
        [
            "kubernetes: accepted: Secrets into a repository with recipients",
            "kubernetes: accepted: Secrets into a repository with recipients_file",
        ],
        MODULE,
        'lib.elem "secrets" includeResources) || settingsEncrypt;',
        'lib.elem "secrets" includeResources) || false;',
    ),
    (
        ["kubernetes: accepted: Secrets into a repository with recipients_file"],
        MODULE,
        "(repoSettings.recipients or [ ]) != [ ] || (repoSettings.recipients_file or null) != null;",
        "(repoSettings.recipients or [ ]) != [ ];",
    ),
    (
        ["assertion: k8s-secrets-no-recipients"],
        MODULE,
        "(repoSettings.recipients or [ ]) != [ ] || (repoSettings.recipients_file or null) != null;",
        "repoSettings ? recipients || (repoSettings.recipients_file or null) != null;",
    ),
    (
        ["kubernetes: accepted: a glob that matches secrets needs no encryption (the daemon excludes them unless named)"],
        MODULE,
        'lib.elem "secrets" includeResources',
        'lib.any (lib.hasPrefix "secret") includeResources',
    ),
    (
        ["assertion: k8s-empty-include-resources"],
        MODULE,
        "lib.isList includeResources\n          && includeResources != [ ]\n",
        "lib.isList includeResources\n",
    ),
    (
        ["assertion: k8s-request-timeout-zero", "assertion: vol-request-timeout-zero"],
        MODULE,
        '(intIn "request_timeout_secs" 1 600 30)',
        '(intIn "request_timeout_secs" 0 600 30)',
    ),
    (
        ["assertion: k8s-request-timeout-big", "assertion: vol-request-timeout-big"],
        MODULE,
        '(intIn "request_timeout_secs" 1 600 30)',
        '(intIn "request_timeout_secs" 1 601 30)',
    ),
    (
        ["assertion: k8s-page-size-zero"],
        MODULE,
        '(intIn "page_size" 1 10000 500)',
        '(intIn "page_size" 0 10000 500)',
    ),
    (
        ["assertion: k8s-page-size-big"],
        MODULE,
        '(intIn "page_size" 1 10000 500)',
        '(intIn "page_size" 1 100000 500)',
    ),
    (
        ["assertion: k8s-page-size-string"],
        MODULE,
        "(lib.isInt v && v >= min && (max == null || v <= max))",
        "(lib.isString v || lib.isInt v && v >= min && (max == null || v <= max))",
    ),
    (
        ["kubernetes: accepted: the bounds of request_timeout_secs and page_size", "volume: accepted: the bounds of the timeouts"],
        MODULE,
        "(lib.isInt v && v >= min && (max == null || v <= max))",
        "(lib.isInt v && v >= min && (max == null || v < max))",
    ),
    (
        ["kubernetes: accepted: ... and their lower bounds", "volume: accepted: ... and their lower bounds"],
        MODULE,
        "(lib.isInt v && v >= min && (max == null || v <= max))",
        "(lib.isInt v && v > min && (max == null || v <= max))",
    ),
    # secret files: outside the store, absolute, credentials the unit gets
    (
        ["assertion: k8s-store-kubeconfig", "assertion: vol-store-kubeconfig"],
        MODULE,
        '++ optionalFileAssertions secretSettingAssertions "jobs.${name}.kubeconfig" kubeconfig',
        '++ optionalFileAssertions fileSettingAssertions "jobs.${name}.kubeconfig" kubeconfig',
    ),
    (
        [
            "assertion: k8s-relative-kubeconfig",
            "assertion: k8s-nix-path-kubeconfig",
            "assertion: vol-relative-kubeconfig",
            "assertion: vol-nix-path-kubeconfig",
        ],
        MODULE,
        '++ optionalFileAssertions secretSettingAssertions "jobs.${name}.kubeconfig" kubeconfig',
        "",
    ),
    (
        ["assertion: k8s-store-token", "assertion: vol-store-token"],
        MODULE,
        '++ optionalFileAssertions secretSettingAssertions "jobs.${name}.token_file" token;',
        '++ optionalFileAssertions fileSettingAssertions "jobs.${name}.token_file" token;',
    ),
    (
        ["assertion: k8s-relative-token", "assertion: k8s-nix-path-token", "assertion: vol-relative-token"],
        MODULE,
        '++ optionalFileAssertions secretSettingAssertions "jobs.${name}.token_file" token;',
        ";",
    ),
    (
        ["assertion: k8s-unknown-credential-kubeconfig", "assertion: vol-unknown-credential-kubeconfig"],
        MODULE,
        '(credentialAssertion "jobs.${name}.kubeconfig" kubeconfig "/path/to/the/kubeconfig")',
        "",
    ),
    (
        ["assertion: k8s-unknown-credential-token", "assertion: vol-unknown-credential-token"],
        MODULE,
        '(credentialAssertion "jobs.${name}.token_file" token "/path/to/the/token")',
        "",
    ),
    (
        ["assertion: k8s-unknown-credential-ca", "assertion: vol-unknown-credential-ca"],
        MODULE,
        '(credentialAssertion "jobs.${name}.ca_file" ca "/path/to/the/ca.pem")',
        "",
    ),
    (
        ["assertion: k8s-relative-ca", "assertion: vol-relative-ca"],
        MODULE,
        "assertion = ca == null || builtins.isPath ca || isAbsolute ca;",
        "assertion = true;",
    ),
    (
        ["kubernetes: accepted: ca_file as a Nix path (it is public)", "volume: accepted: ca_file as a Nix path (it is public)"],
        MODULE,
        "assertion = ca == null || builtins.isPath ca || isAbsolute ca;",
        "assertion = ca == null || isAbsolute ca;",
    ),
    # the CA treated as a secret
    (
        [
            "kubernetes: accepted: ca_file as a Nix path (it is public)",
            "kubernetes: accepted: ca_file in the store",
        ],
        MODULE,
        '++ optionalFileAssertions secretSettingAssertions "jobs.${name}.token_file" token;',
        '++ optionalFileAssertions secretSettingAssertions "jobs.${name}.token_file" token\n'
        '    ++ optionalFileAssertions secretSettingAssertions "jobs.${name}.ca_file" ca;',
    ),
    # credentials the unit gets: services.backuphub.credentials, LoadCredentialEncrypted=
    (
        [
            "kubernetes: accepted: ca_file a credential",
            "kubernetes: a kubeconfig job: no failed assertions, no warnings",
            "kubernetes: a server+token+CA job: no failed assertions, no warnings",
            "module.md: kubernetes: no failed assertions, no warnings",
            "volume: a kubeconfig job: no failed assertions, no warnings",
            "module.md: volume: no failed assertions, no warnings",
        ],
        MODULE,
        "assertion = credential == null || lib.elem credential unitCredentialNames;",
        "assertion = credential == null;",
    ),
    (
        ["kubernetes: accepted: LoadCredentialEncrypted= of the unit counts"],
        MODULE,
        " ++ lib.toList (sc.LoadCredentialEncrypted or [ ]);",
        ";",
    ),
    # ---- kubernetes jobs: warnings
    (
        ["kubernetes: warning for a kubeconfig that is no credential", "volume: warning for a kubeconfig that is no credential"],
        MODULE,
        'notCredentialWarning "jobs.${name}.kubeconfig" (job.kubeconfig or null)\n    ++ ',
        "",
    ),
    (
        ["kubernetes: warning for a token_file that is no credential", "volume: warning for a token_file that is no credential"],
        MODULE,
        '++ notCredentialWarning "jobs.${name}.token_file" (job.token_file or null)',
        "",
    ),
    (
        [
            "kubernetes: warning for a kubeconfig that is no credential",
            "kubernetes: warning for a token_file that is no credential",
        ],
        MODULE,
        "++ lib.concatLists (lib.mapAttrsToList kubeConnectionWarnings kubernetesJobs)\n",
        "\n",
    ),
    # ca_file beside a kubeconfig is an error (the daemon refuses it), not a warning
    (
        [
            "kubernetes: a ca_file beside a kubeconfig fails one assertion, and warns of nothing",
            "volume: a ca_file beside a kubeconfig fails one assertion, and warns of nothing",
        ],
        MODULE,
        '    ++ notCredentialWarning "jobs.${name}.token_file" (job.token_file or null);\n',
        '    ++ notCredentialWarning "jobs.${name}.token_file" (job.token_file or null)\n'
        '    ++ lib.optional ((job.kubeconfig or null) != null && (job.ca_file or null) != null)\n'
        '      "services.backuphub.settings.jobs.${name}.ca_file is ignored with `kubeconfig`.";\n',
    ),
    (
        ["kubernetes: one warning each, and they are warnings, not errors"],
        MODULE,
        "++ lib.concatLists (lib.mapAttrsToList kubeConnectionWarnings kubernetesJobs)\n",
        "++ lib.concatLists (lib.mapAttrsToList kubeConnectionWarnings kubernetesJobs)\n"
        "      ++ lib.concatLists (lib.mapAttrsToList kubeConnectionWarnings kubernetesJobs)\n",
    ),
    # a credential taken for a plain file
    (
        [
            "kubernetes: a kubeconfig job: no failed assertions, no warnings",
            "kubernetes: a server+token+CA job: no failed assertions, no warnings",
            "module.md: kubernetes: no failed assertions, no warnings",
            "volume: a kubeconfig job: no failed assertions, no warnings",
            "volume: a server+token+CA job: no failed assertions, no warnings",
            "module.md: volume: no failed assertions, no warnings",
        ],
        MODULE,
        "lib.optional (isAbsolute value && credentialOf value == null && !inStore value)",
        "lib.optional (isAbsolute value && !inStore value)",
    ),
    # ---- kubernetes jobs: the generated configuration and the unit
    (
        ["kubernetes: the kubeconfig job is generated as written (timezone added)"],
        MODULE,
        'if j.kind == "postgres" then withPostgresDefaults j else j',
        'if j.kind == "postgres" then withPostgresDefaults j else removeAttrs j [ "context" ]',
    ),
    (
        ["kubernetes: the server job is generated as written", "volume: the server job is generated as written"],
        MODULE,
        'if j.kind == "postgres" then withPostgresDefaults j else j',
        'if j.kind == "postgres" then withPostgresDefaults j else removeAttrs j [ "ca_file" ]',
    ),
    (
        ["kubernetes: a minimal job: nothing filled in (the daemon has the defaults)"],
        MODULE,
        'if j.kind == "postgres" then withPostgresDefaults j else j',
        'if j.kind == "postgres" then withPostgresDefaults j else { page_size = 500; } // j',
    ),
    (
        [
            "kubernetes: the kubeconfig is a credential of the unit, and the setting points at it",
            "kubernetes: the token is a credential of the unit",
            "module.md: kubernetes: the kubeconfig from services.backuphub.credentials, nothing on PATH",
            "volume: the kubeconfig is a credential of the unit, and the setting points at it",
            "volume: the token is a credential of the unit, and the setting points at it",
            "module.md: volume: a filesystem and a block volume, the kubeconfig from services.backuphub.credentials, nothing on PATH",
        ],
        MODULE,
        'LoadCredential = lib.mapAttrsToList (name: path: "${name}:${path}") cfg.credentials;',
        "LoadCredential = [ ];",
    ),
    (
        [
            "kubernetes: the unit is the one without the job (but for its credentials and config file)",
            "kubernetes: nothing on PATH, no more writable paths",
            "module.md: kubernetes: the kubeconfig from services.backuphub.credentials, nothing on PATH",
        ],
        MODULE,
        "    cfg.extraPackages\n    ++ lib.optional (",
        "    cfg.extraPackages\n    ++ lib.optional (kubernetesJobs != { }) pkgs.coreutils\n    ++ lib.optional (",
    ),
    (
        [
            "kubernetes: the unit is the one without the job (but for its credentials and config file)",
            "kubernetes: nothing on PATH, no more writable paths",
        ],
        MODULE,
        "ReadWritePaths = [ repoPath ] ++",
        'ReadWritePaths = [ repoPath ] ++ lib.optional (kubernetesJobs != { }) "/var/lib/kube" ++',
    ),
    (
        ["kubernetes: outbound TCP allowed (AF_INET, AF_INET6; no PrivateNetwork, no IP address filter), after network-online.target"],
        MODULE,
        '"AF_INET"\n          "AF_INET6"\n        ];',
        '"AF_INET"\n        ];',
    ),
    (
        ["kubernetes: outbound TCP allowed (AF_INET, AF_INET6; no PrivateNetwork, no IP address filter), after network-online.target"],
        MODULE,
        "        LockPersonality = true;\n",
        '        LockPersonality = true;\n        IPAddressDeny = "any";\n',
    ),
    # ---- volume jobs: assertions (the connection's: see kubernetes jobs above)
    (
        ["assertion: vol-no-connection", "assertion: vol-nothing"],
        MODULE,
        '      ++ lib.optionals (job.kind == "volume") (volumeJobAssertions name job)\n',
        "",
    ),
    # the shared assertion once more, for volume jobs alone: it must fail once
    (
        ["volume: a ca_file beside a kubeconfig fails one assertion, and warns of nothing"],
        MODULE,
        "    kubeConnectionAssertions name job\n    ++ [\n      {\n        assertion = lib.isList volumes;",
        "    kubeConnectionAssertions name job\n    ++ [\n"
        "      {\n"
        "        assertion = (job.kubeconfig or null) == null || (job.ca_file or null) == null;\n"
        '        message = "${prefix}.ca_file goes with `server` and `token_file`, not with `kubeconfig`: the kubeconfig carries its own certificate-authority(-data). Put the CA into the kubeconfig, or drop ca_file.";\n'
        "      }\n"
        "      {\n        assertion = lib.isList volumes;",
    ),
    (
        ["assertion: vol-volumes-string"],
        MODULE,
        "assertion = lib.isList volumes;",
        "assertion = true;",
    ),
    (
        ["assertion: vol-selector-list"],
        MODULE,
        "assertion = lib.isString selector;",
        "assertion = true;",
    ),
    (
        ["assertion: vol-nothing", "assertion: vol-blank-selector", "assertion: vol-no-volumes-key"],
        MODULE,
        "assertion = volumeList != [ ] || nonEmptyString selector;",
        "assertion = true;",
    ),
    (
        ["assertion: vol-blank-selector"],
        MODULE,
        "assertion = volumeList != [ ] || nonEmptyString selector;",
        'assertion = volumeList != [ ] || selector != "";',
    ),
    (
        ["volume: accepted: a selector alone"],
        MODULE,
        "assertion = volumeList != [ ] || nonEmptyString selector;",
        "assertion = volumeList != [ ];",
    ),
    (
        ["assertion: vol-duplicate"],
        MODULE,
        "assertion = named == [ ];",
        "assertion = true;",
    ),
    # each duplicate named once
    (
        ["assertion: vol-duplicate"],
        MODULE,
        "named = lib.unique (lib.filter (v: lib.count (x: x == v) volumeList > 1) volumeList);",
        "named = lib.filter (v: lib.count (x: x == v) volumeList > 1) volumeList;",
    ),
    (
        ["assertion: vol-snapshot-class-bad", "assertion: vol-snapshot-class-None"],
        MODULE,
        'assertion = snapshotClass == "" || isDnsSubdomain snapshotClass;',
        'assertion = snapshotClass == "" || lib.isString snapshotClass;',
    ),
    (
        ["volume: accepted: snapshot_class \"\" (the driver's default)"],
        MODULE,
        'assertion = snapshotClass == "" || isDnsSubdomain snapshotClass;',
        "assertion = isDnsSubdomain snapshotClass;",
    ),
    (
        ["assertion: vol-snapshot-timeout-zero"],
        MODULE,
        '(intIn "snapshot_timeout_secs" 1 86400 600)',
        '(intIn "snapshot_timeout_secs" 0 86400 600)',
    ),
    (
        ["assertion: vol-snapshot-timeout-big"],
        MODULE,
        '(intIn "snapshot_timeout_secs" 1 86400 600)',
        '(intIn "snapshot_timeout_secs" 1 null 600)',
    ),
    (
        ["assertion: vol-pod-timeout-zero"],
        MODULE,
        '(intIn "pod_timeout_secs" 1 86400 300)',
        '(intIn "pod_timeout_secs" 0 86400 300)',
    ),
    (
        ["assertion: vol-pod-timeout-big"],
        MODULE,
        '(intIn "pod_timeout_secs" 1 86400 300)',
        '(intIn "pod_timeout_secs" 1 null 300)',
    ),
    # "namespace/pvc": Kubernetes' name rules
    (
        [
            "assertion: vol-ref-no-slash",
            "assertion: vol-ref-upper",
            "assertion: vol-ref-empty-name",
            "assertion: vol-ref-three",
            "assertion: vol-ref-underscore",
            "assertion: vol-ref-not-a-string",
        ],
        MODULE,
        "assertion = isVolumeRef v;",
        "assertion = true;",
    ),
    (
        [
            "assertion: vol-ref-upper",
            "assertion: vol-ref-empty-namespace",
            "assertion: vol-ref-leading-dash",
            "assertion: vol-ref-dotted-namespace",
            "assertion: vol-ref-long-namespace",
        ],
        MODULE,
        'builtins.match "(${dnsLabelRegex})/(.*)" v',
        'builtins.match "([^/]*)/(.*)" v',
    ),
    (
        ["assertion: vol-ref-three", "assertion: vol-ref-underscore", "assertion: vol-ref-upper-name"],
        MODULE,
        "m != null && isDnsSubdomain (lib.last m);",
        'm != null && lib.last m != "";',
    ),
    (
        ["assertion: vol-ref-long-namespace"],
        MODULE,
        'dnsLabelRegex = "[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?";',
        'dnsLabelRegex = "[a-z0-9]([-a-z0-9]{0,62}[a-z0-9])?";',
    ),
    (
        ["assertion: vol-ref-leading-dash", "assertion: vol-ref-trailing-dash"],
        MODULE,
        'dnsLabelRegex = "[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?";',
        'dnsLabelRegex = "[-a-z0-9]{1,63}";',
    ),
    (
        ["volume: accepted: names at Kubernetes' limits: dotted, 63-character namespace, 253-character PVC name"],
        MODULE,
        'dnsSubdomainRegex = "${dnsLabelRegex}(\\\\.${dnsLabelRegex})*";',
        'dnsSubdomainRegex = dnsLabelRegex;',
    ),
    (
        ["assertion: vol-ref-long-name"],
        MODULE,
        "lib.isString s && lib.stringLength s <= 253 && ",
        "lib.isString s && ",
    ),
    (
        ["volume: accepted: names at Kubernetes' limits: dotted, 63-character namespace, 253-character PVC name"],
        MODULE,
        "lib.isString s && lib.stringLength s <= 253 && ",
        "lib.isString s && lib.stringLength s < 253 && ",
    ),
    # ---- volume jobs: warnings
    (
        [
            "volume: warning for a kubeconfig that is no credential",
            "volume: warning for a token_file that is no credential",
        ],
        MODULE,
        "      ++ lib.concatLists (lib.mapAttrsToList kubeConnectionWarnings volumeJobs)\n",
        "",
    ),
    (
        ["volume: one warning each, and they are warnings, not errors"],
        MODULE,
        "      ++ lib.concatLists (lib.mapAttrsToList kubeConnectionWarnings volumeJobs)\n",
        "      ++ lib.concatLists (lib.mapAttrsToList kubeConnectionWarnings volumeJobs)\n"
        "      ++ lib.concatLists (lib.mapAttrsToList kubeConnectionWarnings volumeJobs)\n",
    ),
    # ---- volume jobs: the generated configuration and the unit
    (
        ["volume: the kubeconfig job is generated as written (timezone added)"],
        MODULE,
        'if j.kind == "postgres" then withPostgresDefaults j else j',
        'if j.kind == "postgres" then withPostgresDefaults j else removeAttrs j [ "selector" ]',
    ),
    (
        ["volume: a minimal job: nothing filled in (the daemon has the defaults)"],
        MODULE,
        'if j.kind == "postgres" then withPostgresDefaults j else j',
        'if j.kind == "postgres" then withPostgresDefaults j else if j.kind == "volume" then { snapshot_class = ""; } // j else j',
    ),
    (
        ["volume: the unit is the one without the job (but for its credentials and config file)"],
        MODULE,
        "ReadWritePaths = [ repoPath ] ++",
        'ReadWritePaths = [ repoPath ] ++ lib.optional (volumeJobs != { }) "/dev/rbd0" ++',
    ),
    # ---- s3 jobs: assertions
    (
        ["assertion: s3-no-endpoint", "assertion: s3-empty-endpoint"],
        MODULE,
        "assertion = nonEmptyString endpoint;",
        "assertion = true;",
    ),
    (
        ["assertion: s3-endpoint-scheme", "assertion: s3-endpoint-scheme-other"],
        MODULE,
        '|| (lib.isString endpoint && (lib.hasPrefix "https://" endpoint || lib.hasPrefix "http://" endpoint));',
        "|| lib.isString endpoint;",
    ),
    (
        ["module.md: s3: no failed assertions, no warnings", "s3: accepted: ... and their lower bounds"],
        MODULE,
        '(lib.hasPrefix "https://" endpoint || lib.hasPrefix "http://" endpoint)',
        '(lib.hasPrefix "https://" endpoint)',
    ),
    (
        ["assertion: s3-no-access-key", "assertion: s3-no-secret-key"],
        MODULE,
        "assertion = value != null;",
        "assertion = true;",
    ),
    (
        ["assertion: s3-no-secret-key"],
        MODULE,
        '++ keyFile "secret_key_file" secretKey',
        '++ keyFile "secret_key_file" (if secretKey == null then "/dev/null" else secretKey)',
    ),
    (
        [
            "assertion: s3-store-access-key",
            "assertion: s3-store-secret-key",
            "assertion: s3-relative-access-key",
            "assertion: s3-nix-path-secret-key",
        ],
        MODULE,
        '++ optionalFileAssertions secretSettingAssertions "jobs.${name}.${key}" value;',
        ";",
    ),
    (
        ["assertion: s3-store-access-key", "assertion: s3-store-secret-key"],
        MODULE,
        '++ optionalFileAssertions secretSettingAssertions "jobs.${name}.${key}" value;',
        '++ optionalFileAssertions fileSettingAssertions "jobs.${name}.${key}" value;',
    ),
    (
        ["assertion: s3-unknown-credential-access-key", "assertion: s3-unknown-credential-secret-key"],
        MODULE,
        '(credentialAssertion "jobs.${name}.${key}" value "/path/to/the/${',
        '(lib.const { assertion = true; } "/path/to/the/${',
    ),
    (
        ["assertion: s3-concurrency-zero"],
        MODULE,
        '(intIn "concurrency" 1 64 4)',
        '(intIn "concurrency" 0 64 4)',
    ),
    (
        ["assertion: s3-concurrency-big", "assertion: s3-attempts-big"],
        MODULE,
        '(intIn "concurrency" 1 64 4)\n      (intIn "attempts" 1 20 4)',
        '(intIn "concurrency" 1 null 4)\n      (intIn "attempts" 1 null 4)',
    ),
    (
        ["assertion: s3-attempts-zero"],
        MODULE,
        '(intIn "attempts" 1 20 4)',
        '(intIn "attempts" 0 20 4)',
    ),
    (
        ["assertion: s3-request-timeout-zero", "assertion: s3-request-timeout-string"],
        MODULE,
        '(intIn "request_timeout_secs" 1 null 60)',
        "",
    ),
    (
        ["s3: accepted: the bounds of concurrency and attempts, a long request timeout"],
        MODULE,
        '(intIn "request_timeout_secs" 1 null 60)',
        '(intIn "request_timeout_secs" 1 600 60)',
    ),
    (
        ["assertion: s3-bucket-slash"],
        MODULE,
        'assertion = lib.isString b && b != "" && !lib.hasInfix "/" b;',
        'assertion = lib.isString b && b != "";',
    ),
    (
        ["assertion: s3-bucket-empty"],
        MODULE,
        'assertion = lib.isString b && b != "" && !lib.hasInfix "/" b;',
        'assertion = lib.isString b && !lib.hasInfix "/" b;',
    ),
    (
        ["assertion: s3-buckets-string"],
        MODULE,
        "assertion = lib.isList buckets;",
        "assertion = true;",
    ),
    (
        ["does not evaluate: bad-kind"],
        MODULE,
        '    "volume"\n    "s3"\n  ];',
        '    "volume"\n    "s3"\n    "tape"\n  ];',
    ),
    # ---- s3 jobs: warnings
    (
        ["s3: warning for an access_key_file that is no credential"],
        MODULE,
        'notCredentialWarning "jobs.${name}.access_key_file" (job.access_key_file or null)\n    ++ ',
        "",
    ),
    (
        ["s3: warning for a secret_key_file that is no credential"],
        MODULE,
        '++ notCredentialWarning "jobs.${name}.secret_key_file" (job.secret_key_file or null)',
        "",
    ),
    (
        [
            "s3: warning for an access_key_file that is no credential",
            "s3: warning for a secret_key_file that is no credential",
        ],
        MODULE,
        "      ++ lib.concatLists (lib.mapAttrsToList s3JobWarnings s3Jobs);",
        ";",
    ),
    # ---- s3 jobs: the generated configuration and the unit
    (
        ["s3: the job is generated as written (timezone added)"],
        MODULE,
        'if j.kind == "postgres" then withPostgresDefaults j else j',
        'if j.kind == "postgres" then withPostgresDefaults j else removeAttrs j [ "path_style" ]',
    ),
    (
        ["s3: a minimal job: nothing filled in (the daemon has the defaults)"],
        MODULE,
        'if j.kind == "postgres" then withPostgresDefaults j else j',
        'if j.kind == "postgres" then withPostgresDefaults j else if j.kind == "s3" then { region = "us-east-1"; } // j else j',
    ),
    (
        [
            "s3: both keys are credentials of the unit, and the settings point at them",
            "module.md: s3: the RGW's keys from services.backuphub.credentials, nothing on PATH",
        ],
        MODULE,
        'LoadCredential = lib.mapAttrsToList (name: path: "${name}:${path}") cfg.credentials;',
        'LoadCredential = lib.mapAttrsToList (name: path: "${name}:${path}") (removeAttrs cfg.credentials [ "rgw-secret-key" ]);',
    ),
    (
        ["s3: the unit is the one without the job (but for its credentials and config file)"],
        MODULE,
        "ReadWritePaths = [ repoPath ] ++",
        'ReadWritePaths = [ repoPath ] ++ lib.optional (s3Jobs != { }) "/var/cache/s3" ++',
    ),
    # ---- services.backuphub.monitoring: the package's files, for a Prometheus or Grafana host
    (
        ["monitoring: the package's alert rules and dashboard", "monitoring: follows services.backuphub.package"],
        MODULE,
        'prometheusRules = shareFile "alerts/backuphub.rules.yml"',
        'prometheusRules = shareFile "alerts/backuphub.rules.yaml"',
    ),
    (
        ["monitoring: the package's alert rules and dashboard", "monitoring: follows services.backuphub.package"],
        MODULE,
        'grafanaAlertRules = shareFile "alerts/grafana-provisioning.yml"',
        'grafanaAlertRules = shareFile "alerts/backuphub.rules.yml"',
    ),
    (
        ["monitoring: the package's alert rules and dashboard", "monitoring: follows services.backuphub.package"],
        MODULE,
        'grafanaDashboard = shareFile "dashboards/backuphub.json"',
        'grafanaDashboard = shareFile "dashboard/backuphub.json"',
    ),
    (
        ["monitoring: follows services.backuphub.package"],
        MODULE,
        'default = "${cfg.package}/share/backuphub/${file}";',
        'default = "${pkgs.backuphub}/share/backuphub/${file}";',
    ),
    (
        # One helper makes all three: dropping readOnly there must break each one's check.
        [
            "does not evaluate: read-only-prometheusRules",
            "does not evaluate: read-only-grafanaAlertRules",
            "does not evaluate: read-only-grafanaDashboard",
            "monitoring: read-only, documented, with a defaultText",
        ],
        MODULE,
        "type = types.pathInStore;\n      readOnly = true;\n      default = \"${cfg.package}/share/backuphub/${file}\";",
        "type = types.pathInStore;\n      default = \"${cfg.package}/share/backuphub/${file}\";",
    ),
    (
        ["does not evaluate: read-only-prometheusScrapeConfig"],
        MODULE,
        "prometheusScrapeConfig = mkOption {\n      type = types.attrs;\n      readOnly = true;",
        "prometheusScrapeConfig = mkOption {\n      type = types.attrs;",
    ),
    (
        ["monitoring: read-only, documented, with a defaultText"],
        MODULE,
        """defaultText = literalExpression ''"''${config.services.backuphub.package}/share/backuphub/${file}"'';""",
        "",
    ),
    # ---- the manual
    (
        ["module.md: names deploy/kubernetes/, which has rbac.yaml and make-kubeconfig.sh"],
        DOC,
        "`deploy/kubernetes/` in backuphub's repository",
        "`deploy/` in backuphub's repository",
    ),
    (
        ["module.md: volume: needs rbac.yaml plus volume-rbac.yaml, which exist"],
        DOC,
        "`deploy/kubernetes/rbac.yaml` plus `deploy/kubernetes/volume-rbac.yaml`",
        "`deploy/kubernetes/rbac.yaml`",
    ),
    (
        ["module.md: names each of services.backuphub.monitoring"],
        DOC,
        "- `services.backuphub.monitoring.grafanaAlertRules`: the same alerts",
        "- `grafanaAlertRules`: the same alerts",
    ),
    (
        ["module.md: restoring into the Pi's MinIO: backuphub-admin restore-s3"],
        DOC,
        "`backuphub-admin restore-s3 latest:rgw",
        "`backuphub restore-s3 latest:rgw",
    ),
]


def main():
    root, out = sys.argv[1], sys.argv[2]
    sources = {f: open(os.path.join(root, f)).read() for f in (MODULE, DOC)}
    bad = 0
    for i, (expected, target, text, replacement) in enumerate(MUTANTS):
        n = sources[target].count(text)
        if n != 1:
            print(f"mutant {i} ({expected[0]}): its text occurs {n} times in {target}", file=sys.stderr)
            bad += 1
            continue
        d = os.path.join(out, str(i))
        os.makedirs(os.path.join(d, "nix"))
        for f, content in sources.items():
            if f == target:
                content = content.replace(text, replacement)
            with open(os.path.join(d, f), "w") as fh:
                fh.write(content)
        with open(os.path.join(d, "expect"), "w") as fh:
            fh.write("".join(e + "\n" for e in expected))
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
