# Evaluates, with Nix 2.8 and no nixpkgs (lib from ../shared/nixpkgs-lib, pkgs from
# ./stub-nixpkgs, stub declarations of the NixOS options used):
#  - module.nix under lib.evalModules: the generated unit (ExecStart, Type, hardening,
#    RequiresMountsFor, LoadCredential), settings, users, firewall ports, assertion messages;
#  - flake.nix's outputs, nix/package.nix's arguments (its source fileset too), the machine of
#    nix/tests/vm.nix, the Pi example of README.md and the postgres, kubernetes, volume, s3 and
#    monitoring-host examples of nix/module.md;
#  - flake.lock against the pin in ../shared/nixpkgs-pin.md.
#
#   nix-instantiate --eval --strict --json tests/nix/eval.nix --arg shared /path/to/shared \
#     --arg piExample /tmp/pi.nix   # the README's example; tests/nix/run.sh does all this
#
# `--arg modulePath /tmp/mutant.nix` evaluates another copy of the module (next to a copy of
# nix/module.md), to see that an expectation catches a deliberate mistake in it.
#
# Prints {"passed": N, ...} when every expectation holds; otherwise fails (non-zero exit) with the
# list of failed expectations. `case` selects a single configuration to force instead (run.sh
# checks the error message of those); `selfTest = true` adds an expectation that must fail.
{
  shared ? ../../../shared,
  lib ? import (shared + "/nixpkgs-lib/lib"),
  case ? null,
  selfTest ? false,
  # `print = "admin"`: the text of the backuphub-admin script of `base` (run.sh runs it);
  # `print = "vm-script"`: the VM test's Python script (run.sh compiles it);
  # `print = "postInstall"`: nix/package.nix's postInstall (run.sh runs it into a directory);
  # `print = "monitoring"`: services.backuphub.monitoring of `base` (run.sh finds each file
  # there)
  print ? null,
  # README.md's pi.nix example, extracted to a file by run.sh
  piExample ? null,
  # nix/module.md's example of a postgres job with a drill, extracted by run.sh
  postgresExample ? null,
  # nix/module.md's example of a kubernetes job with a kubeconfig credential, extracted by run.sh
  kubernetesExample ? null,
  # nix/module.md's example of a volume job with a kubeconfig credential, extracted by run.sh
  volumeExample ? null,
  # nix/module.md's example of an s3 job with its keys as credentials, extracted by run.sh
  s3Example ? null,
  # nix/module.md's examples of a monitoring host (Prometheus rules and the Grafana dashboard;
  # Grafana-managed alert rules), extracted by run.sh
  monitoringExample ? null,
  grafanaAlertsExample ? null,
  # the module under test (see above)
  modulePath ? ../../module.nix,
}:

let
  inherit (lib) types mkOption;

  # ---------------------------------------------------------------- stub pkgs
  stubNixpkgs = {
    outPath = toString ./stub-nixpkgs;
    inherit lib;
  };
  pkgs = import stubNixpkgs {
    inherit lib;
    system = "x86_64-linux";
  }
  // {
    backuphub = fakeDrv "backuphub-0.1.0" // {
      meta.mainProgram = "backuphub";
    };
  };
  fakeDrv = name: {
    type = "derivation";
    inherit name;
    outPath = "/nix/store/00000000000000000000000000000000-${name}";
  };

  # ---------------------------------------------------------------- stub NixOS options
  # Close to the real declarations: a typo in an option name fails here too.
  unitOption =
    let
      primitive = types.oneOf [
        types.bool
        types.int
        types.str
        types.path
      ];
    in
    types.oneOf [
      primitive
      (types.listOf primitive)
    ];

  nixosStubs = {
    options = {
      # nixos/modules/misc/meta.nix and modules/generic/meta-maintainers.nix: a maintainer must
      # be an entry of lib.maintainers (not in ../shared/nixpkgs-lib, so none passes here).
      meta.maintainers = mkOption {
        type = types.listOf (
          lib.mkOptionType {
            name = "maintainer";
            check = _: false;
          }
        );
        default = [ ];
      };
      meta.doc = mkOption {
        type = types.path;
        internal = true;
      };
      systemd.package = mkOption {
        type = types.package;
        default = pkgs.systemd;
      };
      assertions = mkOption {
        type = types.listOf types.unspecified;
        default = [ ];
      };
      warnings = mkOption {
        type = types.listOf types.str;
        default = [ ];
      };
      networking.hostName = mkOption {
        type = types.str;
        default = "nixos";
      };
      networking.firewall.allowedTCPPorts = mkOption {
        type = types.listOf types.port;
        default = [ ];
      };
      environment.systemPackages = mkOption {
        type = types.listOf types.package;
        default = [ ];
      };
      users.users = mkOption {
        type = types.attrsOf (
          types.submodule {
            options = {
              isSystemUser = mkOption {
                type = types.bool;
                default = false;
              };
              group = mkOption {
                type = types.str;
                default = "";
              };
              description = mkOption {
                type = types.str;
                default = "";
              };
              uid = mkOption {
                type = types.nullOr types.int;
                default = null;
              };
            };
          }
        );
        default = { };
      };
      users.groups = mkOption {
        type = types.attrsOf (
          types.submodule {
            options.gid = mkOption {
              type = types.nullOr types.int;
              default = null;
            };
          }
        );
        default = { };
      };
      systemd.services = mkOption {
        default = { };
        type = types.attrsOf (
          types.submodule {
            options = {
              description = mkOption {
                type = types.str;
                default = "";
              };
              wantedBy = mkOption {
                type = types.listOf types.str;
                default = [ ];
              };
              wants = mkOption {
                type = types.listOf types.str;
                default = [ ];
              };
              after = mkOption {
                type = types.listOf types.str;
                default = [ ];
              };
              path = mkOption {
                type = types.listOf types.package;
                default = [ ];
              };
              environment = mkOption {
                type = types.attrsOf types.str;
                default = { };
              };
              unitConfig = mkOption {
                type = types.attrsOf unitOption;
                default = { };
              };
              serviceConfig = mkOption {
                type = types.attrsOf unitOption;
                default = { };
              };
            };
          }
        );
      };
    };
  };

  # what nix/tests/vm.nix sets besides services.backuphub
  vmStubs = {
    options = {
      virtualisation.memorySize = mkOption { type = types.int; };
      virtualisation.emptyDiskImages = mkOption {
        type = types.listOf types.ints.positive;
        default = [ ];
      };
      # as in qemu-vm.nix: what replaces fileSystems in a test VM
      virtualisation.fileSystems = mkOption {
        type = types.attrsOf (
          types.submodule {
            options = {
              device = mkOption { type = types.str; };
              fsType = mkOption { type = types.str; };
              autoFormat = mkOption {
                type = types.bool;
                default = false;
              };
            };
          }
        );
        default = { };
      };
      environment.etc = mkOption {
        type = types.attrsOf types.anything;
        default = { };
      };
      systemd.tmpfiles.rules = mkOption {
        type = types.listOf types.str;
        default = [ ];
      };
      services.postgresql = {
        enable = mkOption {
          type = types.bool;
          default = false;
        };
        authentication = mkOption {
          type = types.lines;
          default = "";
        };
        package = mkOption {
          type = types.package;
          default = pkgs.postgresql;
        };
      };
    };
  };

  # what the README's example (pi.nix) sets besides services.backuphub
  readmeStubs = {
    options.fileSystems = mkOption {
      type = types.attrsOf types.anything;
      default = { };
    };
  };

  eval =
    cfgModule:
    (lib.evalModules {
      modules = [
        nixosStubs
        modulePath
        { _module.args.pkgs = pkgs; }
        cfgModule
      ];
    }).config;

  failedAssertions = config: map (a: a.message) (lib.filter (a: !a.assertion) config.assertions);

  # ---------------------------------------------------------------- configurations
  repo = "/mnt/backup/backuphub";
  creds = "/run/credentials/backuphub.service";

  baseSettings = {
    repository = {
      path = repo;
      identity_file = "${creds}/identity";
    };
    http.token_file = "${creds}/api-token";
    daemon.concurrency = 2;
    jobs = {
      cephfs = {
        kind = "path";
        schedule = "0 0 3 * * *";
        paths = [ "/srv/cephfs" ];
        exclude = [ "*.tmp" ];
        retention.keep_daily = 14;
      };
      pgdump = {
        kind = "command";
        schedule = "0 15 2 * * *";
        timezone = "Europe/Berlin";
        command = [
          "pg_dumpall"
          "-h"
          "/run/postgresql"
        ];
        name = "all.sql";
      };
    };
  };

  withSettings = extra: {
    networking.hostName = "pi";
    services.backuphub = {
      enable = true;
      settings = lib.recursiveUpdate baseSettings extra;
    };
  };

  base = eval {
    networking.hostName = "pi";
    services.backuphub = {
      enable = true;
      settings = baseSettings;
      credentials = {
        identity = "/var/lib/secrets/backuphub/age-identity.txt";
        api-token = "/var/lib/secrets/backuphub/api-token";
      };
      environmentFile = "/var/lib/secrets/backuphub/env";
      postgresqlPackage = pkgs.postgresql;
      extraGroups = [ "ceph" ];
    };
  };
  unit = base.systemd.services.backuphub;
  sc = unit.serviceConfig;

  unchecked = eval {
    services.backuphub = {
      enable = true;
      settings = baseSettings;
      checkConfig = false;
    };
  };

  firewallOpen = eval (
    lib.recursiveUpdate (withSettings { http.listen = "0.0.0.0:9751"; }) {
      services.backuphub.openFirewall = true;
    }
  );
  firewallOpenV6 = eval (
    lib.recursiveUpdate (withSettings { http.listen = "[::]:9750"; }) {
      services.backuphub.openFirewall = true;
    }
  );
  firewallLoopback = eval (
    lib.recursiveUpdate (withSettings { }) { services.backuphub.openFirewall = true; }
  );
  firewallLoopbackV6 = eval (
    lib.recursiveUpdate (withSettings { http.listen = "[::1]:9750"; }) {
      services.backuphub.openFirewall = true;
    }
  );
  listenWide = eval (withSettings { http.listen = "0.0.0.0:9750"; });

  noPath = eval {
    services.backuphub = {
      enable = true;
      settings.jobs = baseSettings.jobs;
    };
  };
  relativePath = eval (withSettings { repository.path = "backup"; });
  badJobs = eval (
    withSettings {
      jobs.nopaths = {
        kind = "path";
        schedule = "0 0 1 * * *";
      };
      jobs.noname = {
        kind = "command";
        schedule = "0 0 1 * * *";
        command = [ "etcdctl" ];
      };
    }
  );
  badCredName = eval (
    lib.recursiveUpdate (withSettings { }) {
      services.backuphub.credentials."bad/name" = "/var/lib/secrets/x";
    }
  );
  portZero = eval (withSettings { http.listen = "0.0.0.0:0"; });

  # ---- issue 9: what the module validates itself (each must fail with its message)
  withService = extra: svc: eval (lib.recursiveUpdate (withSettings extra) { services.backuphub = svc; });
  invalid = {
    relative-job-path = {
      config = eval (withSettings { jobs.cephfs.paths = [ "srv/data" ]; });
      message = "jobs.cephfs.paths: \"srv/data\" (item 0) must be an absolute path";
    };
    relative-identity = {
      config = eval (withSettings { repository.identity_file = "identity"; });
      message = "settings.repository.identity_file must be an absolute path, not \"identity\"";
    };
    nix-path-identity = {
      config = eval (withSettings { repository.identity_file = ./eval.nix; });
      message = "settings.repository.identity_file is a Nix path";
    };
    store-token = {
      config = eval (withSettings { http.token_file = "/nix/store/00000000000000000000000000000000-token"; });
      message = "settings.http.token_file = \"/nix/store/00000000000000000000000000000000-token\" is in the world-readable Nix store";
    };
    relative-recipients-file = {
      config = eval (withSettings { repository.recipients_file = "keys.txt"; });
      message = "settings.repository.recipients_file must be an absolute path";
    };
    relative-state-dir = {
      config = eval (withSettings { repository.state_dir = "state"; });
      message = "repository.state_dir must be an absolute path, not \"state\"";
    };
    store-repository = {
      config = eval (withSettings { repository.path = "/nix/store/x-repo"; });
      message = "cannot be in the read-only Nix store";
    };
    listen-host-name = {
      config = eval (withSettings { http.listen = "localhost:9750"; });
      message = "http.listen = \"localhost:9750\" is not an IP address and port";
    };
    listen-no-host = {
      config = eval (withSettings { http.listen = "9750"; });
      message = "http.listen = \"9750\" is not an IP address and port";
    };
    listen-octal-octet = {
      config = eval (withSettings { http.listen = "010.0.0.1:9750"; });
      message = "http.listen = \"010.0.0.1:9750\" is not an IP address and port";
    };
    listen-big-port = {
      config = eval (withSettings { http.listen = "0.0.0.0:99999"; });
      message = "the port must be between 1 and 65535";
    };
    job-name = {
      config = eval (
        withSettings {
          jobs."etc files" = {
            kind = "path";
            schedule = "@daily";
            paths = [ "/etc" ];
          };
        }
      );
      message = "jobs.\"etc files\": a job name must be 1-64 characters";
    };
    schedule-fields = {
      config = eval (withSettings { jobs.cephfs.schedule = "0 0 0 3 * * * 2026"; });
      message = "jobs.cephfs.schedule = \"0 0 0 3 * * * 2026\": a cron expression has 6 fields";
    };
    empty-command = {
      config = eval (withSettings { jobs.pgdump.command = [ "" ]; });
      message = "jobs.pgdump: a job of kind \"command\" needs `command`, a non-empty list of strings";
    };
    no-command = {
      config = eval (withSettings { jobs.pgdump.command = [ ]; });
      message = "jobs.pgdump: a job of kind \"command\" needs `command`";
    };
    unsafe-name = {
      config = eval (withSettings { jobs.pgdump.name = "../all.sql"; });
      message = "jobs.pgdump: a job of kind \"command\" needs `name`";
    };
    uid-custom-user = {
      config = withService { } {
        user = "alice";
        uid = 975;
      };
      message = "services.backuphub.uid is set, but services.backuphub.user = \"alice\" is not created by this module";
    };
    gid-custom-group = {
      config = withService { } {
        group = "staff";
        gid = 975;
      };
      message = "services.backuphub.gid is set, but services.backuphub.group = \"staff\"";
    };
  };

  # ---- issue 9: what a NixOS admin expects
  leadingZeroPort = withService { http.listen = "0.0.0.0:09750"; } { openFirewall = true; };
  admin = withService {
    daemon.stop_timeout_secs = 300;
    jobs.homes = {
      kind = "path";
      schedule = "0 0 4 * * *";
      paths = [ "/home/alice" ];
    };
  } {
    extraPackages = [ pkgs.etcd ];
    readAllFiles = true;
    uid = 975;
    gid = 976;
    extraGroups = [ "ceph" ];
    environmentFile = "/var/lib/secrets/backuphub/env";
  };
  adminUnit = admin.systemd.services.backuphub;
  adminScript = lib.head (lib.filter (p: p.name == "backuphub-admin") base.environment.systemPackages);

  # cross: an aarch64 Pi built on x86_64 (pkgs with the flake's overlay, as on a real system)
  crossPkgs =
    buildHasBackuphub:
    import stubNixpkgs {
      inherit lib;
      system = "x86_64-linux";
      crossSystem = "aarch64-linux";
      overlays = lib.optional buildHasBackuphub outputs.overlays.default;
    }
    // lib.optionalAttrs (!buildHasBackuphub) {
      backuphub = fakeDrv "backuphub-0.1.0" // {
        meta.mainProgram = "backuphub";
        outPath = "/nix/store/10000000000000000000000000000000-backuphub-0.1.0";
      };
    };
  evalCross =
    buildHasBackuphub:
    (lib.evalModules {
      modules = [
        nixosStubs
        modulePath
        { _module.args.pkgs = crossPkgs buildHasBackuphub; }
        (withSettings { })
      ];
    }).config;
  cross = evalCross true;
  crossNoBuildPkg = evalCross false;

  stateOnly = eval (withSettings { repository.state_dir = "/srv/backuphub-state"; });

  created = eval (
    lib.recursiveUpdate (withSettings {
      repository.create = true;
      repository.state_dir = "/mnt/backup/state";
    }) { services.backuphub.user = "alice"; }
  );

  disabled = eval { services.backuphub.settings.repository.path = repo; };

  # ---- postgres jobs
  # services.postgresql as NixOS declares it (only what the module reads)
  postgresqlStubs = {
    options.services.postgresql = {
      enable = mkOption {
        type = types.bool;
        default = false;
      };
      package = mkOption {
        type = types.package;
        default = pkgs.postgresql;
      };
    };
  };
  pgJob = {
    kind = "postgres";
    schedule = "0 30 2 * * *";
    host = "db.lan";
    user = "backup";
    password_file = "${creds}/shop-db";
    databases = [ "shop" ];
    format = "ordered";
    drill = {
      schedule = "0 0 5 * * Sun";
      checks = [
        {
          database = "shop";
          query = "SELECT count(*) FROM orders";
          expect = ">= 1000";
        }
      ];
    };
  };
  pgCredentials = {
    identity = "/var/lib/secrets/backuphub/age-identity.txt";
    api-token = "/var/lib/secrets/backuphub/api-token";
    shop-db = "/var/lib/secrets/backuphub/shop-db";
  };
  # baseSettings plus the postgres job `shop` (pgJob changed by `job`, or `replaceJob`), the
  # password a credential, and more of services.backuphub (`svc`); checkConfig off, so that the
  # generated value is at hand
  pgWith =
    {
      name ? "shop",
      job ? { },
      replaceJob ? lib.recursiveUpdate pgJob job,
      settings ? { },
      svc ? { },
      modules ? [ ],
      evalWith ? eval,
    }:
    evalWith {
      imports = [ postgresqlStubs ] ++ modules;
      networking.hostName = "pi";
      services.backuphub = {
        enable = true;
        checkConfig = false;
        credentials = pgCredentials;
        settings = lib.recursiveUpdate (lib.recursiveUpdate baseSettings settings) {
          jobs.${name} = replaceJob;
        };
      }
      // svc;
    };
  pgValue = c: c.services.backuphub.configFile.value;
  pgUnit = c: c.systemd.services.backuphub;
  pgStore = name: "/nix/store/00000000000000000000000000000000-${name}";
  pgAdminText = c: (lib.head (lib.filter (p: p.name == "backuphub-admin") c.environment.systemPackages)).text;

  pg = pgWith { };
  # the local server's package, when services.postgresql is on (and only then)
  pgLocalServer = pgWith {
    modules = [
      {
        services.postgresql = {
          enable = true;
          package = pkgs.postgresql_16;
        };
      }
    ];
  };
  pgLocalServerOff = pgWith {
    modules = [ { services.postgresql.package = pkgs.postgresql_16; } ];
  };
  pgSeveral = pgWith {
    svc.postgresqlClientPackages = [
      pkgs.postgresql_16
      pkgs.postgresql_18
    ];
  };
  pgJit = pgWith { svc.postgresqlPackage = pkgs.postgresql_17_jit; };
  pgNoPackage = pgWith { svc.postgresqlPackage = null; };
  pgOwnDirs = pgWith { job.bin_dirs = [ "/opt/pg16/bin" ]; };
  # null: the daemon's own defaults (PATH, the system's temporary directory)
  pgDaemonDefaults = pgWith {
    job = {
      bin_dirs = [ ];
      drill.server_bin_dir = null;
      drill.work_dir = null;
    };
  };
  pgNoDrill = pgWith { job.drill = null; };
  pgStateDir = pgWith { settings.repository.state_dir = "/srv/backuphub-state"; };
  # a work directory elsewhere; writeShellScript shows its text in the store path, to read it
  pgScratch = pgWith {
    job.drill.work_dir = "/srv/scratch";
    evalWith =
      cfgModule:
      (lib.evalModules {
        modules = [
          nixosStubs
          modulePath
          {
            _module.args.pkgs = pkgs // {
              writeShellScript = name: text: fakeDrv name // { outPath = "${(fakeDrv name).outPath}\n${text}"; };
            };
          }
          cfgModule
        ];
      }).config;
  };
  pgScratchPre = (pgUnit pgScratch).serviceConfig.ExecStartPre;
  pgTmpWork = pgWith { job.drill.work_dir = "/var/tmp/drills"; };
  # credentials set on the unit directly (systemd-creds) count too
  pgEncryptedCredential = pgWith {
    job.password_file = "${creds}/shop-db-enc";
    modules = [
      {
        systemd.services.backuphub.serviceConfig.LoadCredentialEncrypted = [
          "shop-db-enc:/etc/credstore.encrypted/shop-db"
        ];
      }
    ];
  };
  pgCredentialDir = pgWith { job.password_file = "${creds}/shop-db/password"; };

  # warnings, not errors
  pgPlainPassword = pgWith { job.password_file = "/var/lib/secrets/backuphub/shop-db"; };
  pgLongName = pgWith { name = "the-shop-database-on-the-rack-server"; };
  pgRoot = pgWith { svc.user = "root"; };
  pgEncryptedNoIdentity = pgWith {
    settings.repository = {
      recipients = [ "age1nejytmrmjc4wf9w6zj8cyjlz54cu6exl5kz9vx3c2k0qqt4cwpdsy65tua" ];
      identity_file = null;
    };
  };
  pgEncrypted = pgWith {
    settings.repository.recipients = [ "age1nejytmrmjc4wf9w6zj8cyjlz54cu6exl5kz9vx3c2k0qqt4cwpdsy65tua" ];
  };

  # each must fail with its message
  invalidPostgres = {
    pg-no-host = {
      config = pgWith { job.host = " "; };
      message = "jobs.shop: a job of kind \"postgres\" needs `host`";
    };
    pg-relative-socket-dir = {
      config = pgWith { job.host = "run/postgresql"; };
      message = "jobs.shop: a job of kind \"postgres\" needs `host`: a host name, an IP address or the absolute path";
    };
    pg-no-user = {
      config = pgWith { replaceJob = removeAttrs pgJob [ "user" ]; };
      message = "jobs.shop: a job of kind \"postgres\" needs `user`";
    };
    pg-format = {
      config = pgWith { job.format = "directory"; };
      message = "jobs.shop.format = \"directory\": one of \"custom\"";
    };
    pg-sslmode = {
      config = pgWith { job.sslmode = "verify-full"; };
      message = "jobs.shop.sslmode = \"verify-full\": one of \"disable\"";
    };
    pg-store-password = {
      config = pgWith { job.password_file = "/nix/store/00000000000000000000000000000000-pw"; };
      message = "settings.jobs.shop.password_file = \"/nix/store/00000000000000000000000000000000-pw\" is in the world-readable Nix store";
    };
    pg-nix-path-password = {
      config = pgWith { job.password_file = ./eval.nix; };
      message = "settings.jobs.shop.password_file is a Nix path";
    };
    pg-relative-password = {
      config = pgWith { job.password_file = "shop-db"; };
      message = "settings.jobs.shop.password_file must be an absolute path, not \"shop-db\"";
    };
    pg-unknown-credential = {
      config = pgWith { job.password_file = "${creds}/shop"; };
      message = "jobs.shop.password_file = \"${creds}/shop\" is the credential \"shop\", which the unit does not get";
    };
    pg-drill-no-schedule = {
      config = pgWith { replaceJob = pgJob // { drill = removeAttrs pgJob.drill [ "schedule" ]; }; };
      message = "jobs.shop.drill needs `schedule`";
    };
    pg-drill-bad-schedule = {
      config = pgWith { job.drill.schedule = "weekly"; };
      message = "jobs.shop.drill needs `schedule`, when the restore drill runs";
    };
    pg-drill-not-a-table = {
      config = pgWith { job.drill = "0 0 5 * * Sun"; };
      message = "jobs.shop.drill must be an attribute set";
    };
    pg-relative-work-dir = {
      config = pgWith { job.drill.work_dir = "drill"; };
      message = "settings.jobs.shop.drill.work_dir must be an absolute path, not \"drill\"";
    };
    pg-store-work-dir = {
      config = pgWith { job.drill.work_dir = "/nix/store/00000000000000000000000000000000-drill"; };
      message = "jobs.shop.drill.work_dir = \"/nix/store/00000000000000000000000000000000-drill\" is in the read-only Nix store";
    };
    pg-relative-server-bin-dir = {
      config = pgWith { job.drill.server_bin_dir = "bin"; };
      message = "settings.jobs.shop.drill.server_bin_dir must be an absolute path, not \"bin\"";
    };
    pg-relative-bin-dir = {
      config = pgWith {
        job.bin_dirs = [
          "/usr/lib/postgresql/17/bin"
          "pg/bin"
        ];
      };
      message = "settings.jobs.shop.bin_dirs (item 1) must be an absolute path, not \"pg/bin\"";
    };
  };

  # ---- kubernetes jobs
  # with a kubeconfig (every key the daemon knows, none of them at its default)
  k8sJob = {
    kind = "kubernetes";
    schedule = "0 0 1 * * *";
    kubeconfig = "${creds}/kubeconfig";
    context = "homelab";
    include_namespaces = [ "prod-*" "media" ];
    exclude_namespaces = [ "prod-scratch" ];
    include_resources = [ "*.apps" "configmaps" ];
    exclude_resources = [ "replicasets.apps" ];
    label_selector = "backup!=skip";
    cluster_scoped = false;
    request_timeout_secs = 60;
    page_size = 250;
  };
  # with the API server's URL and a token instead
  k8sServerJob = {
    kind = "kubernetes";
    schedule = "0 0 1 * * *";
    server = "https://10.0.0.10:6443";
    token_file = "${creds}/k8s-token";
    ca_file = "/etc/kubernetes/homelab-ca.pem";
  };
  k8sCredentials = {
    identity = "/var/lib/secrets/backuphub/age-identity.txt";
    api-token = "/var/lib/secrets/backuphub/api-token";
    kubeconfig = "/etc/secrets/backuphub-kubeconfig";
    k8s-token = "/etc/secrets/backuphub-k8s-token";
  };
  # baseSettings plus the kubernetes job `cluster` (k8sJob with `job` over it, or `replaceJob`),
  # its secrets credentials; checkConfig off, so that the generated value is at hand
  k8sWith =
    {
      job ? { },
      replaceJob ? k8sJob // job,
      settings ? { },
      svc ? { },
      modules ? [ ],
    }:
    eval {
      imports = modules;
      networking.hostName = "pi";
      services.backuphub = {
        enable = true;
        checkConfig = false;
        credentials = k8sCredentials;
        settings = lib.recursiveUpdate (lib.recursiveUpdate baseSettings settings) {
          jobs.cluster = replaceJob;
        };
      }
      // svc;
    };
  k8sServerWith = job: k8sWith { replaceJob = k8sServerJob // job; };
  ageRecipient = "age1nejytmrmjc4wf9w6zj8cyjlz54cu6exl5kz9vx3c2k0qqt4cwpdsy65tua";

  k8s = k8sWith { };
  k8sServer = k8sWith { replaceJob = k8sServerJob; };
  k8sMinimal = k8sWith {
    replaceJob = {
      kind = "kubernetes";
      schedule = "@daily";
      kubeconfig = "${creds}/kubeconfig";
    };
  };
  # accepted as well
  k8sAccepted = {
    "server over http:// (kubectl proxy)" = k8sServerWith {
      server = "http://127.0.0.1:8001";
      ca_file = null;
    };
    "ca_file as a Nix path (it is public)" = k8sServerWith { ca_file = ./eval.nix; };
    "ca_file in the store" = k8sServerWith { ca_file = "/nix/store/00000000000000000000000000000000-homelab-ca.pem"; };
    "ca_file a credential" = k8sWith {
      replaceJob = k8sServerJob // {
        ca_file = "${creds}/k8s-ca";
      };
      svc.credentials = k8sCredentials // {
        k8s-ca = "/etc/secrets/k8s-ca.pem";
      };
    };
    "Secrets into a repository with recipients" = k8sWith {
      job.include_resources = [ "*" "secrets" ];
      settings.repository.recipients = [ ageRecipient ];
    };
    "Secrets into a repository with recipients_file" = k8sWith {
      job.include_resources = [ "secrets" ];
      settings.repository.recipients_file = "/etc/backuphub/recipients.txt";
    };
    "a glob that matches secrets needs no encryption (the daemon excludes them unless named)" = k8sWith {
      job.include_resources = [ "secret*" ];
    };
    "the bounds of request_timeout_secs and page_size" = k8sWith {
      job = {
        request_timeout_secs = 600;
        page_size = 10000;
      };
    };
    "... and their lower bounds" = k8sWith {
      job = {
        request_timeout_secs = 1;
        page_size = 1;
      };
    };
    "LoadCredentialEncrypted= of the unit counts" = k8sWith {
      job.kubeconfig = "${creds}/kubeconfig-enc";
      modules = [
        {
          systemd.services.backuphub.serviceConfig.LoadCredentialEncrypted = [
            "kubeconfig-enc:/etc/credstore.encrypted/kubeconfig"
          ];
        }
      ];
    };
  };

  # warnings, not errors
  k8sPlainKubeconfig = k8sWith { job.kubeconfig = "/etc/secrets/backuphub-kubeconfig"; };
  k8sPlainToken = k8sServerWith { token_file = "/var/lib/secrets/k8s-token"; };

  # ca_file beside a kubeconfig: the daemon refuses it for both kinds (Connection::validate),
  # so one assertion (kubeConnectionAssertions) fails, and nothing is only a warning
  k8sCaWithKubeconfig = k8sWith { job.ca_file = "/etc/kubernetes/homelab-ca.pem"; };
  caWithKubeconfigMessage =
    name:
    "services.backuphub.settings.jobs.${name}.ca_file goes with `server` and `token_file`, not with `kubeconfig`: the kubeconfig carries its own certificate-authority(-data). Put the CA into the kubeconfig, or drop ca_file.";

  # each must fail with its message
  invalidKubernetes = {
    k8s-no-connection = {
      config = k8sWith {
        replaceJob = removeAttrs k8sJob [
          "kubeconfig"
          "context"
        ];
      };
      message = "jobs.cluster: a job of kind \"kubernetes\" needs `kubeconfig` (a kubeconfig file, passed as a credential: \"${creds}/kubeconfig\"), or `server` (the API server's URL) and `token_file` (a bearer token, passed as a credential).";
    };
    k8s-server-without-token = {
      config = k8sWith { replaceJob = removeAttrs k8sServerJob [ "token_file" ]; };
      message = "jobs.cluster: a job of kind \"kubernetes\" needs `kubeconfig`";
    };
    k8s-server-without-token-says-so = {
      config = k8sWith { replaceJob = removeAttrs k8sServerJob [ "token_file" ]; };
      message = "; `token_file` is missing.";
    };
    k8s-token-without-server = {
      config = k8sWith { replaceJob = removeAttrs k8sServerJob [ "server" ]; };
      message = "; `server` is missing.";
    };
    k8s-kubeconfig-and-server = {
      config = k8sWith {
        job = {
          inherit (k8sServerJob) server token_file;
        };
      };
      message = "jobs.cluster: give either `kubeconfig` or `server` and `token_file`, not both";
    };
    k8s-kubeconfig-and-token = {
      config = k8sWith { job.token_file = k8sServerJob.token_file; };
      message = "jobs.cluster: give either `kubeconfig` or `server` and `token_file`, not both";
    };
    k8s-server-scheme = {
      config = k8sServerWith { server = "10.0.0.10:6443"; };
      message = "jobs.cluster.server = \"10.0.0.10:6443\": the API server's URL, starting with https:// (or http://)";
    };
    k8s-server-scheme-case = {
      config = k8sServerWith { server = "HTTPS://10.0.0.10:6443"; };
      message = "jobs.cluster.server = \"HTTPS://10.0.0.10:6443\": the API server's URL";
    };
    k8s-context-without-kubeconfig = {
      config = k8sServerWith { context = "homelab"; };
      message = "jobs.cluster.context is set, but only a kubeconfig has contexts";
    };
    k8s-store-kubeconfig = {
      config = k8sWith { job.kubeconfig = "/nix/store/00000000000000000000000000000000-kubeconfig"; };
      message = "settings.jobs.cluster.kubeconfig = \"/nix/store/00000000000000000000000000000000-kubeconfig\" is in the world-readable Nix store";
    };
    k8s-nix-path-kubeconfig = {
      config = k8sWith { job.kubeconfig = ./eval.nix; };
      message = "settings.jobs.cluster.kubeconfig is a Nix path";
    };
    k8s-relative-kubeconfig = {
      config = k8sWith { job.kubeconfig = "kubeconfig"; };
      message = "settings.jobs.cluster.kubeconfig must be an absolute path, not \"kubeconfig\"";
    };
    k8s-unknown-credential-kubeconfig = {
      config = k8sWith { job.kubeconfig = "${creds}/kube"; };
      message = "jobs.cluster.kubeconfig = \"${creds}/kube\" is the credential \"kube\", which the unit does not get";
    };
    k8s-store-token = {
      config = k8sServerWith { token_file = "/nix/store/00000000000000000000000000000000-token"; };
      message = "settings.jobs.cluster.token_file = \"/nix/store/00000000000000000000000000000000-token\" is in the world-readable Nix store";
    };
    k8s-nix-path-token = {
      config = k8sServerWith { token_file = ./eval.nix; };
      message = "settings.jobs.cluster.token_file is a Nix path";
    };
    k8s-relative-token = {
      config = k8sServerWith { token_file = "token"; };
      message = "settings.jobs.cluster.token_file must be an absolute path, not \"token\"";
    };
    k8s-unknown-credential-token = {
      config = k8sServerWith { token_file = "${creds}/token"; };
      message = "jobs.cluster.token_file = \"${creds}/token\" is the credential \"token\", which the unit does not get";
    };
    k8s-ca-with-kubeconfig = {
      config = k8sCaWithKubeconfig;
      message = caWithKubeconfigMessage "cluster";
    };
    k8s-relative-ca = {
      config = k8sServerWith { ca_file = "ca.pem"; };
      message = "settings.jobs.cluster.ca_file must be an absolute path (or a Nix path: the CA certificate is public), not \"ca.pem\"";
    };
    k8s-unknown-credential-ca = {
      config = k8sServerWith { ca_file = "${creds}/k8s-ca"; };
      message = "jobs.cluster.ca_file = \"${creds}/k8s-ca\" is the credential \"k8s-ca\", which the unit does not get";
    };
    k8s-secrets-unencrypted = {
      config = k8sWith {
        job.include_resources = [
          "*"
          "secrets"
        ];
      };
      message = "jobs.cluster.include_resources names \"secrets\", but the repository is not encrypted (neither settings.repository.recipients nor settings.repository.recipients_file is set): Kubernetes Secrets go only into an encrypted repository";
    };
    k8s-secrets-no-recipients = {
      config = k8sWith {
        job.include_resources = [ "secrets" ];
        settings.repository.recipients = [ ];
      };
      message = "jobs.cluster.include_resources names \"secrets\", but the repository is not encrypted";
    };
    k8s-empty-include-resources = {
      config = k8sWith { job.include_resources = [ ]; };
      message = "jobs.cluster.include_resources must be a non-empty list of globs";
    };
    k8s-request-timeout-zero = {
      config = k8sWith { job.request_timeout_secs = 0; };
      message = "jobs.cluster.request_timeout_secs = 0: an integer from 1 to 600 (default 30).";
    };
    k8s-request-timeout-big = {
      config = k8sWith { job.request_timeout_secs = 601; };
      message = "jobs.cluster.request_timeout_secs = 601: an integer from 1 to 600";
    };
    k8s-page-size-big = {
      config = k8sWith { job.page_size = 10001; };
      message = "jobs.cluster.page_size = 10001: an integer from 1 to 10000 (default 500).";
    };
    k8s-page-size-zero = {
      config = k8sWith { job.page_size = 0; };
      message = "jobs.cluster.page_size = 0: an integer from 1 to 10000";
    };
    k8s-page-size-string = {
      config = k8sWith { job.page_size = "500"; };
      message = "jobs.cluster.page_size = \"500\": an integer";
    };
  };

  # ---- volume jobs
  # with a kubeconfig (every key the daemon knows, none of them at its default)
  volJob = {
    kind = "volume";
    schedule = "0 30 1 * * *";
    kubeconfig = "${creds}/kubeconfig";
    context = "homelab";
    volumes = [ "immich/library" "database/data-postgresql-0" ];
    selector = "backuphub.io/backup=true";
    snapshot_class = "csi-rbdplugin-snapclass";
    reader_image = "registry.lan/library/busybox:1.37";
    include = [ "library/**" "upload/**" ];
    exclude = [ "upload/tmp" ];
    snapshot_timeout_secs = 1200;
    pod_timeout_secs = 600;
    request_timeout_secs = 60;
  };
  # with the API server's URL and a token instead
  volServerJob = {
    kind = "volume";
    schedule = "0 30 1 * * *";
    server = "https://10.0.0.10:6443";
    token_file = "${creds}/k8s-token";
    ca_file = "/etc/kubernetes/homelab-ca.pem";
    volumes = [ "immich/library" ];
  };
  # baseSettings plus the volume job `volumes` (volJob with `job` over it, or `replaceJob`) and
  # its secrets as credentials (those of the kubernetes jobs); checkConfig off, so that the
  # generated value is at hand
  volWith =
    {
      job ? { },
      replaceJob ? volJob // job,
      svc ? { },
      modules ? [ ],
    }:
    eval {
      imports = modules;
      networking.hostName = "pi";
      services.backuphub = {
        enable = true;
        checkConfig = false;
        credentials = k8sCredentials;
        settings = lib.recursiveUpdate baseSettings { jobs.volumes = replaceJob; };
      }
      // svc;
    };
  volJob' = job: volWith { inherit job; };
  volServerWith = job: volWith { replaceJob = volServerJob // job; };
  # the longest names Kubernetes allows: a namespace of 63, a PVC name of 253 characters
  label63 = lib.strings.replicate 63 "a";
  subdomain253 = lib.concatStringsSep "." [ label63 label63 label63 (lib.strings.replicate 61 "b") ];

  vol = volWith { };
  volServer = volWith { replaceJob = volServerJob; };
  volMinimal = volWith {
    replaceJob = {
      kind = "volume";
      schedule = "@daily";
      kubeconfig = "${creds}/kubeconfig";
      volumes = [ "immich/library" ];
    };
  };
  # accepted as well
  volAccepted = {
    "a selector alone" = volWith {
      replaceJob = removeAttrs volJob [ "volumes" ] // {
        selector = "app.kubernetes.io/part-of=immich";
      };
    };
    "volumes alone, selector \"\"" = volJob' { selector = ""; };
    "snapshot_class \"none\" (the live volume)" = volJob' { snapshot_class = "none"; };
    "snapshot_class \"\" (the driver's default)" = volJob' { snapshot_class = ""; };
    "names at Kubernetes' limits: dotted, 63-character namespace, 253-character PVC name" = volJob' {
      volumes = [
        "a/b.c"
        "${label63}/x"
        "n/${subdomain253}"
        "0/0-0"
      ];
    };
    "the bounds of the timeouts" = volJob' {
      snapshot_timeout_secs = 86400;
      pod_timeout_secs = 86400;
      request_timeout_secs = 600;
    };
    "... and their lower bounds" = volJob' {
      snapshot_timeout_secs = 1;
      pod_timeout_secs = 1;
      request_timeout_secs = 1;
    };
    "server over http:// (kubectl proxy)" = volServerWith {
      server = "http://127.0.0.1:8001";
      ca_file = null;
    };
    "ca_file as a Nix path (it is public)" = volServerWith { ca_file = ./eval.nix; };
  };

  # warnings, not errors
  volPlainKubeconfig = volJob' { kubeconfig = "/etc/secrets/backuphub-kubeconfig"; };
  volPlainToken = volServerWith { token_file = "/var/lib/secrets/k8s-token"; };

  # refused, as for kubernetes jobs (k8sCaWithKubeconfig)
  volCaWithKubeconfig = volJob' { ca_file = "/etc/kubernetes/homelab-ca.pem"; };

  # each must fail with its message
  invalidVolume = {
    vol-no-connection = {
      config = volWith {
        replaceJob = removeAttrs volJob [
          "kubeconfig"
          "context"
        ];
      };
      message = "jobs.volumes: a job of kind \"volume\" needs `kubeconfig` (a kubeconfig file, passed as a credential: \"${creds}/kubeconfig\"), or `server` (the API server's URL) and `token_file` (a bearer token, passed as a credential).";
    };
    vol-server-without-token = {
      config = volWith { replaceJob = removeAttrs volServerJob [ "token_file" ]; };
      message = "and `token_file` (a bearer token, passed as a credential); `token_file` is missing.";
    };
    vol-token-without-server = {
      config = volWith { replaceJob = removeAttrs volServerJob [ "server" ]; };
      message = "; `server` is missing.";
    };
    vol-kubeconfig-and-server = {
      config = volJob' {
        inherit (volServerJob) server token_file;
      };
      message = "jobs.volumes: give either `kubeconfig` or `server` and `token_file`, not both";
    };
    vol-server-scheme = {
      config = volServerWith { server = "10.0.0.10:6443"; };
      message = "jobs.volumes.server = \"10.0.0.10:6443\": the API server's URL, starting with https:// (or http://)";
    };
    vol-context-without-kubeconfig = {
      config = volServerWith { context = "homelab"; };
      message = "jobs.volumes.context is set, but only a kubeconfig has contexts";
    };
    vol-ca-with-kubeconfig = {
      config = volCaWithKubeconfig;
      message = caWithKubeconfigMessage "volumes";
    };
    vol-store-kubeconfig = {
      config = volJob' { kubeconfig = "/nix/store/00000000000000000000000000000000-kubeconfig"; };
      message = "settings.jobs.volumes.kubeconfig = \"/nix/store/00000000000000000000000000000000-kubeconfig\" is in the world-readable Nix store";
    };
    vol-nix-path-kubeconfig = {
      config = volJob' { kubeconfig = ./eval.nix; };
      message = "settings.jobs.volumes.kubeconfig is a Nix path";
    };
    vol-relative-kubeconfig = {
      config = volJob' { kubeconfig = "kubeconfig"; };
      message = "settings.jobs.volumes.kubeconfig must be an absolute path, not \"kubeconfig\"";
    };
    vol-unknown-credential-kubeconfig = {
      config = volJob' { kubeconfig = "${creds}/kube"; };
      message = "jobs.volumes.kubeconfig = \"${creds}/kube\" is the credential \"kube\", which the unit does not get";
    };
    vol-store-token = {
      config = volServerWith { token_file = "/nix/store/00000000000000000000000000000000-token"; };
      message = "settings.jobs.volumes.token_file = \"/nix/store/00000000000000000000000000000000-token\" is in the world-readable Nix store";
    };
    vol-relative-token = {
      config = volServerWith { token_file = "token"; };
      message = "settings.jobs.volumes.token_file must be an absolute path, not \"token\"";
    };
    vol-unknown-credential-token = {
      config = volServerWith { token_file = "${creds}/token"; };
      message = "jobs.volumes.token_file = \"${creds}/token\" is the credential \"token\", which the unit does not get";
    };
    vol-relative-ca = {
      config = volServerWith { ca_file = "ca.pem"; };
      message = "settings.jobs.volumes.ca_file must be an absolute path (or a Nix path: the CA certificate is public), not \"ca.pem\"";
    };
    vol-unknown-credential-ca = {
      config = volServerWith { ca_file = "${creds}/k8s-ca"; };
      message = "jobs.volumes.ca_file = \"${creds}/k8s-ca\" is the credential \"k8s-ca\", which the unit does not get";
    };
    vol-request-timeout-zero = {
      config = volJob' { request_timeout_secs = 0; };
      message = "jobs.volumes.request_timeout_secs = 0: an integer from 1 to 600 (default 30).";
    };
    vol-request-timeout-big = {
      config = volJob' { request_timeout_secs = 601; };
      message = "jobs.volumes.request_timeout_secs = 601: an integer from 1 to 600";
    };
    vol-nothing = {
      config = volJob' {
        volumes = [ ];
        selector = "";
      };
      message = "jobs.volumes: a job of kind \"volume\" needs `volumes`, a list of \"namespace/pvc\" names (e.g. [ \"immich/library\" ]), or `selector`, a label selector over the PVCs of every namespace (e.g. \"backuphub.io/backup=true\"); with neither, nothing would be backed up.";
    };
    vol-blank-selector = {
      config = volJob' {
        volumes = [ ];
        selector = " ";
      };
      message = "jobs.volumes: a job of kind \"volume\" needs `volumes`";
    };
    vol-no-volumes-key = {
      config = volWith {
        replaceJob = removeAttrs volJob [
          "volumes"
          "selector"
        ];
      };
      message = "jobs.volumes: a job of kind \"volume\" needs `volumes`";
    };
    vol-volumes-string = {
      config = volJob' { volumes = "immich/library"; };
      message = "jobs.volumes.volumes must be a list of \"namespace/pvc\" names (default [ ]), not \"immich/library\".";
    };
    vol-selector-list = {
      config = volJob' { selector = [ "app=immich" ]; };
      message = "jobs.volumes.selector must be a label selector, a string (default \"\": none), not [";
    };
    vol-duplicate = {
      config = volJob' {
        volumes = [
          "immich/library"
          "database/data-postgresql-0"
          "immich/library"
        ];
      };
      message = "jobs.volumes.volumes names \"immich/library\" more than once.";
    };
    vol-ref-no-slash = {
      config = volJob' { volumes = [ "library" ]; };
      message = "jobs.volumes.volumes: \"library\" (item 0) is not \"namespace/pvc\": the namespace is a DNS label";
    };
    vol-ref-upper = {
      config = volJob' { volumes = [ "immich/library" "Immich/library" ]; };
      message = "jobs.volumes.volumes: \"Immich/library\" (item 1) is not \"namespace/pvc\"";
    };
    vol-ref-upper-name = {
      config = volJob' { volumes = [ "a/B" ]; };
      message = "jobs.volumes.volumes: \"a/B\" (item 0) is not \"namespace/pvc\"";
    };
    vol-ref-three = {
      config = volJob' { volumes = [ "a/b/c" ]; };
      message = "jobs.volumes.volumes: \"a/b/c\" (item 0) is not \"namespace/pvc\"";
    };
    vol-ref-empty-namespace = {
      config = volJob' { volumes = [ "/b" ]; };
      message = "jobs.volumes.volumes: \"/b\" (item 0) is not \"namespace/pvc\"";
    };
    vol-ref-empty-name = {
      config = volJob' { volumes = [ "a/" ]; };
      message = "jobs.volumes.volumes: \"a/\" (item 0) is not \"namespace/pvc\"";
    };
    vol-ref-leading-dash = {
      config = volJob' { volumes = [ "-a/b" ]; };
      message = "jobs.volumes.volumes: \"-a/b\" (item 0) is not \"namespace/pvc\"";
    };
    vol-ref-trailing-dash = {
      config = volJob' { volumes = [ "a/b-" ]; };
      message = "jobs.volumes.volumes: \"a/b-\" (item 0) is not \"namespace/pvc\"";
    };
    vol-ref-underscore = {
      config = volJob' { volumes = [ "a/b_c" ]; };
      message = "jobs.volumes.volumes: \"a/b_c\" (item 0) is not \"namespace/pvc\"";
    };
    vol-ref-dotted-namespace = {
      config = volJob' { volumes = [ "a.b/c" ]; };
      message = "jobs.volumes.volumes: \"a.b/c\" (item 0) is not \"namespace/pvc\"";
    };
    vol-ref-long-namespace = {
      config = volJob' { volumes = [ "${label63}a/x" ]; };
      message = "jobs.volumes.volumes: \"${label63}a/x\" (item 0) is not \"namespace/pvc\"";
    };
    vol-ref-long-name = {
      config = volJob' { volumes = [ "n/${subdomain253}b" ]; };
      message = "jobs.volumes.volumes: \"n/${subdomain253}b\" (item 0) is not \"namespace/pvc\"";
    };
    vol-ref-not-a-string = {
      config = volJob' { volumes = [ 42 ]; };
      message = "jobs.volumes.volumes: 42 (item 0) is not \"namespace/pvc\"";
    };
    vol-snapshot-class-bad = {
      config = volJob' { snapshot_class = "Bad Class"; };
      message = "jobs.volumes.snapshot_class = \"Bad Class\": \"\" (the default: the CSI driver's default VolumeSnapshotClass), \"none\" (the live volume, mounted read-only: not point-in-time) or the name of a VolumeSnapshotClass";
    };
    vol-snapshot-class-None = {
      config = volJob' { snapshot_class = "None"; };
      message = "jobs.volumes.snapshot_class = \"None\": \"\"";
    };
    vol-snapshot-timeout-zero = {
      config = volJob' { snapshot_timeout_secs = 0; };
      message = "jobs.volumes.snapshot_timeout_secs = 0: an integer from 1 to 86400 (default 600).";
    };
    vol-snapshot-timeout-big = {
      config = volJob' { snapshot_timeout_secs = 86401; };
      message = "jobs.volumes.snapshot_timeout_secs = 86401: an integer from 1 to 86400";
    };
    vol-pod-timeout-zero = {
      config = volJob' { pod_timeout_secs = 0; };
      message = "jobs.volumes.pod_timeout_secs = 0: an integer from 1 to 86400 (default 300).";
    };
    vol-pod-timeout-big = {
      config = volJob' { pod_timeout_secs = 86401; };
      message = "jobs.volumes.pod_timeout_secs = 86401: an integer from 1 to 86400";
    };
  };

  # ---- s3 jobs
  # every key the daemon knows, none of them at its default
  s3Job = {
    kind = "s3";
    schedule = "0 0 4 * * *";
    endpoint = "http://10.0.0.30:7480";
    region = "homelab";
    path_style = false;
    access_key_file = "${creds}/rgw-access-key";
    secret_key_file = "${creds}/rgw-secret-key";
    buckets = [ "photos" "docs" ];
    include = [ "2026/*" "shared/*" ];
    exclude = [ "*.tmp" ];
    concurrency = 8;
    attempts = 6;
    request_timeout_secs = 120;
  };
  s3Credentials = {
    identity = "/var/lib/secrets/backuphub/age-identity.txt";
    api-token = "/var/lib/secrets/backuphub/api-token";
    rgw-access-key = "/etc/secrets/rgw-access-key";
    rgw-secret-key = "/etc/secrets/rgw-secret-key";
  };
  # baseSettings plus the s3 job `rgw` (s3Job with `job` over it, or `replaceJob`) and its
  # credentials; checkConfig off, so that the generated value is at hand
  s3With =
    {
      job ? { },
      replaceJob ? s3Job // job,
      svc ? { },
      modules ? [ ],
    }:
    eval {
      imports = modules;
      networking.hostName = "pi";
      services.backuphub = {
        enable = true;
        checkConfig = false;
        credentials = s3Credentials;
        settings = lib.recursiveUpdate baseSettings { jobs.rgw = replaceJob; };
      }
      // svc;
    };
  s3Job' = job: s3With { inherit job; };

  s3 = s3With { };
  s3Minimal = s3With {
    replaceJob = {
      kind = "s3";
      schedule = "@daily";
      endpoint = "https://s3.lan";
      access_key_file = "${creds}/rgw-access-key";
      secret_key_file = "${creds}/rgw-secret-key";
    };
  };
  s3Accepted = {
    "https:// endpoint" = s3Job' { endpoint = "https://rgw.lan"; };
    "the bounds of concurrency and attempts, a long request timeout" = s3Job' {
      concurrency = 64;
      attempts = 20;
      request_timeout_secs = 86400;
    };
    "... and their lower bounds" = s3Job' {
      concurrency = 1;
      attempts = 1;
      request_timeout_secs = 1;
    };
    "no buckets (every bucket the keys can list)" = s3Job' { buckets = [ ]; };
    "keys in one credential directory" = s3With {
      job = {
        access_key_file = "${creds}/rgw/access";
        secret_key_file = "${creds}/rgw/secret";
      };
      svc.credentials = s3Credentials // {
        rgw = "/etc/secrets/rgw";
      };
    };
    "LoadCredentialEncrypted= of the unit counts" = s3With {
      job.secret_key_file = "${creds}/rgw-secret-key-enc";
      modules = [
        {
          systemd.services.backuphub.serviceConfig.LoadCredentialEncrypted = [
            "rgw-secret-key-enc:/etc/credstore.encrypted/rgw-secret-key"
          ];
        }
      ];
    };
  };

  # warnings, not errors
  s3PlainAccessKey = s3Job' { access_key_file = "/etc/secrets/rgw-access-key"; };
  s3PlainSecretKey = s3Job' { secret_key_file = "/var/lib/secrets/rgw-secret-key"; };

  # each must fail with its message
  invalidS3 = {
    s3-no-endpoint = {
      config = s3With { replaceJob = removeAttrs s3Job [ "endpoint" ]; };
      message = "jobs.rgw: a job of kind \"s3\" needs `endpoint`, the S3 server's URL";
    };
    s3-empty-endpoint = {
      config = s3Job' { endpoint = " "; };
      message = "jobs.rgw: a job of kind \"s3\" needs `endpoint`";
    };
    s3-endpoint-scheme = {
      config = s3Job' { endpoint = "10.0.0.30:7480"; };
      message = "jobs.rgw.endpoint = \"10.0.0.30:7480\": the S3 server's URL, starting with http:// or https://";
    };
    s3-endpoint-scheme-other = {
      config = s3Job' { endpoint = "s3://10.0.0.30:7480"; };
      message = "jobs.rgw.endpoint = \"s3://10.0.0.30:7480\": the S3 server's URL";
    };
    s3-no-access-key = {
      config = s3With { replaceJob = removeAttrs s3Job [ "access_key_file" ]; };
      message = "jobs.rgw: a job of kind \"s3\" needs `access_key_file`, the file with the access key on its first line, passed as a credential (e.g. \"${creds}/rgw-access-key\").";
    };
    s3-no-secret-key = {
      config = s3With { replaceJob = removeAttrs s3Job [ "secret_key_file" ]; };
      message = "jobs.rgw: a job of kind \"s3\" needs `secret_key_file`, the file with the secret key on its first line";
    };
    s3-store-access-key = {
      config = s3Job' { access_key_file = "/nix/store/00000000000000000000000000000000-ak"; };
      message = "settings.jobs.rgw.access_key_file = \"/nix/store/00000000000000000000000000000000-ak\" is in the world-readable Nix store";
    };
    s3-store-secret-key = {
      config = s3Job' { secret_key_file = "/nix/store/00000000000000000000000000000000-sk"; };
      message = "settings.jobs.rgw.secret_key_file = \"/nix/store/00000000000000000000000000000000-sk\" is in the world-readable Nix store";
    };
    s3-nix-path-access-key = {
      config = s3Job' { access_key_file = ./eval.nix; };
      message = "settings.jobs.rgw.access_key_file is a Nix path";
    };
    s3-nix-path-secret-key = {
      config = s3Job' { secret_key_file = ./eval.nix; };
      message = "settings.jobs.rgw.secret_key_file is a Nix path";
    };
    s3-relative-access-key = {
      config = s3Job' { access_key_file = "rgw-access-key"; };
      message = "settings.jobs.rgw.access_key_file must be an absolute path, not \"rgw-access-key\"";
    };
    s3-relative-secret-key = {
      config = s3Job' { secret_key_file = "rgw-secret-key"; };
      message = "settings.jobs.rgw.secret_key_file must be an absolute path, not \"rgw-secret-key\"";
    };
    s3-unknown-credential-access-key = {
      config = s3Job' { access_key_file = "${creds}/ak"; };
      message = "jobs.rgw.access_key_file = \"${creds}/ak\" is the credential \"ak\", which the unit does not get: set services.backuphub.credentials.\"ak\" = \"/path/to/the/access-key\"";
    };
    s3-unknown-credential-secret-key = {
      config = s3Job' { secret_key_file = "${creds}/sk/secret"; };
      message = "jobs.rgw.secret_key_file = \"${creds}/sk/secret\" is the credential \"sk\", which the unit does not get: set services.backuphub.credentials.\"sk\" = \"/path/to/the/secret-key\"";
    };
    s3-concurrency-zero = {
      config = s3Job' { concurrency = 0; };
      message = "jobs.rgw.concurrency = 0: an integer from 1 to 64 (default 4).";
    };
    s3-concurrency-big = {
      config = s3Job' { concurrency = 65; };
      message = "jobs.rgw.concurrency = 65: an integer from 1 to 64";
    };
    s3-attempts-zero = {
      config = s3Job' { attempts = 0; };
      message = "jobs.rgw.attempts = 0: an integer from 1 to 20 (default 4).";
    };
    s3-attempts-big = {
      config = s3Job' { attempts = 21; };
      message = "jobs.rgw.attempts = 21: an integer from 1 to 20";
    };
    s3-request-timeout-zero = {
      config = s3Job' { request_timeout_secs = 0; };
      message = "jobs.rgw.request_timeout_secs = 0: an integer of at least 1 (default 60).";
    };
    s3-request-timeout-string = {
      config = s3Job' { request_timeout_secs = "60"; };
      message = "jobs.rgw.request_timeout_secs = \"60\": an integer of at least 1";
    };
    s3-bucket-slash = {
      config = s3Job' { buckets = [ "photos" "docs/2026" ]; };
      message = "jobs.rgw.buckets: \"docs/2026\" (item 1) is not a bucket name: a non-empty name without \"/\"";
    };
    s3-bucket-empty = {
      config = s3Job' { buckets = [ "" ]; };
      message = "jobs.rgw.buckets: \"\" (item 0) is not a bucket name";
    };
    s3-buckets-string = {
      config = s3Job' { buckets = "photos"; };
      message = "jobs.rgw.buckets must be a list of bucket names";
    };
  };

  # configurations that must not evaluate (type errors)
  badCases = {
    bad-kind = eval (
      withSettings {
        jobs.k8s = {
          kind = "tape";
          schedule = "0 0 1 * * *";
        };
      }
    );
    store-credential = eval (
      lib.recursiveUpdate (withSettings { }) {
        services.backuphub.credentials.identity = "/nix/store/00000000000000000000000000000000-identity";
      }
    );
    relative-credential = eval (
      lib.recursiveUpdate (withSettings { }) {
        services.backuphub.credentials.identity = "secrets/identity";
      }
    );
  }
  # the read-only options: set (to a value of their type), they fail
  // lib.listToAttrs (
    map (name: {
      name = "read-only-${name}";
      value = eval (
        lib.recursiveUpdate (withSettings { }) {
          services.backuphub.monitoring.${name} = "/nix/store/00000000000000000000000000000000-elsewhere/${name}";
        }
      );
    }) [ "prometheusRules" "grafanaAlertRules" "grafanaDashboard" ]
  )
  // {
    read-only-prometheusScrapeConfig = eval (
      lib.recursiveUpdate (withSettings { }) {
        services.backuphub.prometheusScrapeConfig = { job_name = "other"; };
      }
    );
  };
  # what forcing a bad case evaluates: the unit (as a system build would), the settings and the
  # read-only options another host reads
  force =
    c:
    builtins.deepSeq [
      c.services.backuphub.settings
      c.systemd.services
      c.services.backuphub.prometheusScrapeConfig
      c.services.backuphub.monitoring
    ] true;
  fails = c: !(builtins.tryEval (force c)).success;

  # ---------------------------------------------------------------- flake.lock
  lock = builtins.fromJSON (builtins.readFile ../../flake.lock);
  pinText = builtins.readFile (shared + "/nixpkgs-pin.md");
  # the pin is the one ```json block of the file: a `"nixpkgs": { ... }` object member
  pinBlock = lib.removePrefix "json" (builtins.elemAt (lib.splitString "```" pinText) 1);
  pin = (builtins.fromJSON "{${pinBlock}}").nixpkgs;

  # ---------------------------------------------------------------- flake.nix
  flake = import ../../flake.nix;
  outputs = flake.outputs {
    self = outputs;
    nixpkgs = stubNixpkgs;
  };
  systems = [
    "aarch64-linux"
    "x86_64-linux"
  ];
  pkgArgs = outputs.packages.x86_64-linux.default.args;
  # The package's source: lib.fileset needs builtins.readFileType (Nix 2.14), here polyfilled
  # as nixpkgs' lib did before it required it. The filter of fs.toSource says what is in the
  # source; its outPath (a copy into the store) is never forced.
  libReadFileType = lib.extend (
    _: prev: {
      filesystem = prev.filesystem // {
        pathType =
          builtins.readFileType or (
            p: if toString p == "/" then "directory" else (builtins.readDir (dirOf p)).${baseNameOf p}
          );
      };
    }
  );
  pkgSrc =
    (import stubNixpkgs {
      lib = libReadFileType;
      overlays = [ outputs.overlays.default ];
    }).backuphub.args.src;
  inPkgSrc = type: p: pkgSrc.filter (toString p) type;
  # what postInstall installs, from the repository (run.sh runs it and compares)
  kubernetesYaml = lib.attrNames (
    lib.filterAttrs (n: t: t == "regular" && lib.hasSuffix ".yaml" n) (
      builtins.readDir ../../deploy/kubernetes
    )
  );
  installedFiles =
    [
      ../../dashboards/backuphub.json
      ../../alerts/backuphub.rules.yml
      ../../alerts/grafana-provisioning.yml
      ../../deploy/kubernetes/make-kubeconfig.sh
    ]
    ++ map (n: ../../deploy/kubernetes + "/${n}") kubernetesYaml;

  # services.backuphub.monitoring for a package
  monitoringOf = package: {
    prometheusRules = "${package}/share/backuphub/alerts/backuphub.rules.yml";
    grafanaAlertRules = "${package}/share/backuphub/alerts/grafana-provisioning.yml";
    grafanaDashboard = "${package}/share/backuphub/dashboards/backuphub.json";
  };
  otherPackage = fakeDrv "backuphub-0.2.0" // {
    meta.mainProgram = "backuphub";
  };
  moduleOptions =
    (lib.evalModules {
      modules = [
        nixosStubs
        modulePath
        { _module.args.pkgs = pkgs; }
      ];
    }).options;
  ownPackage = eval (
    lib.recursiveUpdate (withSettings { }) { services.backuphub.package = otherPackage; }
  );
  cargoToml = lib.importTOML ../../Cargo.toml;
  # integration tests the Nix build runs (tests/repo_*.rs, tests/cli_*.rs)
  testFiles = lib.attrNames (
    lib.filterAttrs (n: t: t == "regular" && lib.hasSuffix ".rs" n) (
      if builtins.pathExists ../../tests then builtins.readDir ../../tests else { }
    )
  );
  offlineTests = map (lib.removeSuffix ".rs") (
    lib.filter (n: lib.hasPrefix "repo_" n || lib.hasPrefix "cli_" n) testFiles
  );

  # the VM test's machine, evaluated with the stubs and the flake's overlay
  vmTest = outputs.checks.x86_64-linux.vm.test;
  vmNode =
    (lib.evalModules {
      modules = [
        nixosStubs
        vmStubs
        vmTest.nodes.machine
        {
          _module.args.pkgs = import stubNixpkgs {
            inherit lib;
            overlays = [ outputs.overlays.default ];
          };
        }
      ];
    }).config;
  vmUnit = vmNode.systemd.services.backuphub;

  # the README's complete example for the Pi (run.sh extracts the ```nix block starting with
  # "# pi.nix" to a file: --eval cannot write one to the store)
  pi =
    (lib.evalModules {
      modules = [
        nixosStubs
        readmeStubs
        modulePath
        { _module.args.pkgs = pkgs; }
        (if piExample != null then piExample else { })
      ];
    }).config;
  piUnit = pi.systemd.services.backuphub;

  # nix/module.md's postgres example (extracted by run.sh like the README's)
  pgDoc =
    (lib.evalModules {
      modules = [
        nixosStubs
        postgresqlStubs
        modulePath
        { _module.args.pkgs = pkgs; }
        # to read the generated settings (the stub's formats.toml keeps them)
        { services.backuphub.checkConfig = false; }
        (if postgresExample != null then postgresExample else { })
      ];
    }).config;
  pgDocUnit = pgDoc.systemd.services.backuphub;
  pgDocJob = pgDoc.services.backuphub.configFile.value.jobs.shop or { };

  # nix/module.md's kubernetes example (extracted by run.sh like the others)
  k8sDoc =
    (lib.evalModules {
      modules = [
        nixosStubs
        modulePath
        { _module.args.pkgs = pkgs; }
        { services.backuphub.checkConfig = false; }
        (if kubernetesExample != null then kubernetesExample else { })
      ];
    }).config;
  k8sDocUnit = k8sDoc.systemd.services.backuphub or { };
  k8sDocJob = k8sDoc.services.backuphub.configFile.value.jobs.cluster or { };

  # nix/module.md's volume example (extracted by run.sh like the others)
  volDoc =
    (lib.evalModules {
      modules = [
        nixosStubs
        modulePath
        { _module.args.pkgs = pkgs; }
        { services.backuphub.checkConfig = false; }
        (if volumeExample != null then volumeExample else { })
      ];
    }).config;
  volDocUnit = volDoc.systemd.services.backuphub or { };
  volDocJob = volDoc.services.backuphub.configFile.value.jobs.volumes or { };

  # nix/module.md's s3 example (extracted by run.sh like the others)
  s3Doc =
    (lib.evalModules {
      modules = [
        nixosStubs
        modulePath
        { _module.args.pkgs = pkgs; }
        { services.backuphub.checkConfig = false; }
        (if s3Example != null then s3Example else { })
      ];
    }).config;
  s3DocUnit = s3Doc.systemd.services.backuphub or { };
  s3DocJob = s3Doc.services.backuphub.configFile.value.jobs.rgw or { };

  # nix/module.md's monitoring-host examples: another machine of the flake, which reaches the
  # Pi (`base`) through `self` (specialArgs), with the NixOS options it sets declared as in
  # nixpkgs (prometheus.nix, grafana.nix: only what the examples use)
  monitorStubs = {
    options.services.prometheus = {
      enable = mkOption {
        type = types.bool;
        default = false;
      };
      scrapeConfigs = mkOption {
        type = types.listOf types.attrs;
        default = [ ];
      };
      ruleFiles = mkOption {
        type = types.listOf types.path;
        default = [ ];
      };
    };
    options.services.grafana = {
      enable = mkOption {
        type = types.bool;
        default = false;
      };
      provision.dashboards.settings = mkOption {
        type = types.nullOr (
          types.submodule {
            options.apiVersion = mkOption {
              type = types.int;
              default = 1;
            };
            options.providers = mkOption {
              type = types.listOf (
                types.submodule {
                  freeformType = types.attrsOf types.anything;
                  options = {
                    name = mkOption {
                      type = types.str;
                      default = "default";
                    };
                    type = mkOption {
                      type = types.str;
                      default = "file";
                    };
                    options.path = mkOption { type = types.path; };
                  };
                }
              );
              default = [ ];
            };
          }
        );
        default = null;
      };
      provision.alerting.rules.path = mkOption {
        type = types.nullOr types.path;
        default = null;
      };
    };
  };
  monitorDoc =
    example:
    (lib.evalModules {
      specialArgs.self.nixosConfigurations.pi.config = base;
      modules = [
        nixosStubs
        monitorStubs
        { _module.args.pkgs = pkgs; }
        (if example != null then example else { })
      ];
    }).config;
  monDoc = monitorDoc monitoringExample;
  alertsDoc = monitorDoc grafanaAlertsExample;

  # ---------------------------------------------------------------- expectations
  show = lib.generators.toPretty { };
  expect = name: actual: expected: {
    inherit name;
    ok = actual == expected;
    detail = "expected ${show expected}, got ${show actual}";
  };
  expectTrue = name: cond: {
    inherit name;
    ok = cond;
    detail = "condition is false";
  };
  expectAssertion =
    name: config: fragment:
    let
      msgs = failedAssertions config;
    in
    {
      inherit name;
      ok = lib.any (lib.hasInfix fragment) msgs;
      detail = "no failed assertion mentions ${show fragment}; failed assertions: ${show msgs}";
    };

  expectWarning =
    name: config: fragment:
    {
      inherit name;
      ok = lib.any (lib.hasInfix fragment) config.warnings;
      detail = "no warning mentions ${show fragment}; warnings: ${show config.warnings}";
    };

  pkgBin = "/nix/store/00000000000000000000000000000000-backuphub-0.1.0/bin/backuphub";
  checkedCfg = "/nix/store/00000000000000000000000000000000-backuphub-config-checked";
  rawCfg = "/nix/store/00000000000000000000000000000000-backuphub.toml";

  hardening = {
    ProtectSystem = "strict";
    ProtectHome = true;
    PrivateTmp = true;
    PrivateDevices = true;
    NoNewPrivileges = true;
    CapabilityBoundingSet = "";
    AmbientCapabilities = "";
    RestrictAddressFamilies = [
      "AF_UNIX"
      "AF_INET"
      "AF_INET6"
    ];
    SystemCallFilter = [
      "@system-service"
      "~@privileged @resources"
    ];
    SystemCallArchitectures = "native";
    MemoryDenyWriteExecute = true;
    UMask = "0077";
    ProtectKernelTunables = true;
    ProtectKernelModules = true;
    ProtectKernelLogs = true;
    ProtectControlGroups = true;
    ProtectClock = true;
    ProtectHostname = true;
    RestrictNamespaces = true;
    RestrictRealtime = true;
    RestrictSUIDSGID = true;
    LockPersonality = true;
    ProtectProc = "invisible";
    StateDirectory = "backuphub";
    StateDirectoryMode = "0700";
  };

  # postgres jobs (see pgWith)
  pgChecks =
    let
      # a missing key fails the expectation instead of the evaluation
      shop = c: (pgValue c).jobs.shop;
      get = c: key: (shop c).${key} or "<unset>";
      drill = c: key: (shop c).drill.${key} or "<unset>";
      bin = name: "${pgStore name}/bin";
      sc' = c: (pgUnit c).serviceConfig;
      names = map (p: p.name);
    in
    [
      (expect "postgres: no failed assertions, no warnings" [ (failedAssertions pg) pg.warnings ] [ [ ] [ ] ])
      (expect "postgres: the generated job, with bin_dirs and the drill's server_bin_dir and work_dir filled in" (shop pg) (
        pgJob
        // {
          timezone = "UTC";
          bin_dirs = [ (bin "postgresql-17.6") ];
          drill = pgJob.drill // {
            server_bin_dir = bin "postgresql-17.6";
            work_dir = "/var/lib/backuphub/drill";
          };
        }
      ))
      (expect "postgres: path and command jobs get none of it" [ (pgValue pg).jobs.cephfs (pgValue pg).jobs.pgdump ] [
        (baseSettings.jobs.cephfs // { timezone = "UTC"; })
        baseSettings.jobs.pgdump
      ])
      (expect "postgres: PostgreSQL on the unit's PATH, without setting postgresqlPackage" (names (pgUnit pg).path) [
        "postgresql-17.6"
      ])
      (expect "no postgres job and postgresqlPackage not set: PostgreSQL not on PATH (nor in the closure)"
        unchecked.systemd.services.backuphub.path
        [ ]
      )
      (expectTrue "postgres: PostgreSQL on backuphub-admin's PATH too" (
        lib.hasInfix "-E PATH=${bin "postgresql-17.6"}:/run/current-system/sw/bin " (pgAdminText pg)
      ))
      (expect "postgres: the password is a credential of the unit, and the setting points at it" [
        (lib.elem "shop-db:/var/lib/secrets/backuphub/shop-db" (sc' pg).LoadCredential)
        (get pg "password_file")
      ] [ true "/run/credentials/backuphub.service/shop-db" ])
      (expect "postgres: the default work_dir is in the StateDirectory: no more writable paths, mounts or ExecStartPre" [
        (sc' pg).StateDirectory
        (sc' pg).ReadWritePaths
        (pgUnit pg).unitConfig.RequiresMountsFor
        ((sc' pg).ExecStartPre or [ ])
      ] [ "backuphub" [ repo ] [ repo ] [ ] ])
      (expect "postgres: postgresqlPackage is services.postgresql.package when services.postgresql is on" [
        (get pgLocalServer "bin_dirs")
        (drill pgLocalServer "server_bin_dir")
        (names (pgUnit pgLocalServer).path)
      ] [ [ (bin "postgresql-16.10") ] (bin "postgresql-16.10") [ "postgresql-16.10" ] ])
      (expect "postgres: ... and pkgs.postgresql when it is off" (names [
        pgLocalServerOff.services.backuphub.postgresqlPackage
      ]) [ "postgresql-17.6" ])
      (expect "postgres: several versions: all in bin_dirs, the drill's server left to the daemon, one on PATH" [
        (get pgSeveral "bin_dirs")
        ((shop pgSeveral).drill ? server_bin_dir)
        (names (pgUnit pgSeveral).path)
      ] [ [ (bin "postgresql-17.6") (bin "postgresql-16.10") (bin "postgresql-18.1") ] false [ "postgresql-17.6" ] ])
      (expect "postgres: a PostgreSQL with JIT is given to jobs without it, so MemoryDenyWriteExecute stays" [
        (get pgJit "bin_dirs")
        (drill pgJit "server_bin_dir")
        (names (pgUnit pgJit).path)
        (sc' pgJit).MemoryDenyWriteExecute
      ] [ [ (bin "postgresql-17.6") ] (bin "postgresql-17.6") [ "postgresql-17.6-jit" ] true ])
      (expect "postgres: postgresqlPackage = null: no bin_dirs, no server_bin_dir, nothing on PATH" [
        ((shop pgNoPackage) ? bin_dirs)
        ((shop pgNoPackage).drill ? server_bin_dir)
        (drill pgNoPackage "work_dir")
        (pgUnit pgNoPackage).path
      ] [ false false "/var/lib/backuphub/drill" [ ] ])
      (expect "postgres: the job's own bin_dirs are kept, and the daemon picks the drill's server" [
        (get pgOwnDirs "bin_dirs")
        ((shop pgOwnDirs).drill ? server_bin_dir)
      ] [ [ "/opt/pg16/bin" ] false ])
      (expect "postgres: null and [ ] keep the daemon's defaults (PATH, its temporary directory)" [
        (get pgDaemonDefaults "bin_dirs")
        (get pgDaemonDefaults "drill")
      ] [ [ ] pgJob.drill ])
      (expect "postgres: a job without a drill gets no drill" [ ((shop pgNoDrill) ? drill) (get pgNoDrill "bin_dirs") ] [
        false
        [ (bin "postgresql-17.6") ]
      ])
      (expect "postgres: work_dir follows a custom state_dir" [
        (drill pgStateDir "work_dir")
        (sc' pgStateDir).ReadWritePaths
      ] [ "/srv/backuphub-state/drill" [ repo "/srv/backuphub-state" ] ])
      (expect "postgres: a work_dir elsewhere is writable and mounted first" [
        (sc' pgScratch).ReadWritePaths
        (pgUnit pgScratch).unitConfig.RequiresMountsFor
        (lib.length pgScratchPre)
      ] [ [ repo "/srv/scratch" ] [ repo "/srv/scratch" ] 1 ])
      (expectTrue "postgres: ... and created when missing, for the service user, an existing one left alone" (
        let
          pre = lib.concatStrings pgScratchPre;
        in
        lib.all (x: lib.hasInfix x pre) [
          "for d in /srv/scratch; do"
          "if [ ! -d \"$d\" ]; then"
          "${pgStore "coreutils-9.7"}/bin/install -d -m 0700 -o backuphub -g backuphub \"$d\""
        ]
        && lib.hasPrefix "+${pgStore "backuphub-drill-work-dirs"}\n" pre
      ))
      (expect "postgres: a work_dir below the private /var/tmp needs nothing" [
        (sc' pgTmpWork).ReadWritePaths
        ((sc' pgTmpWork).ExecStartPre or [ ])
      ] [ [ repo ] [ ] ])
      (expect "postgres: LoadCredentialEncrypted= of the unit counts, a directory credential too" [
        (failedAssertions pgEncryptedCredential)
        (failedAssertions pgCredentialDir)
      ] [ [ ] [ ] ])
      (expectWarning "postgres: warning for a password_file that is no credential" pgPlainPassword
        "jobs.shop.password_file = \"/var/lib/secrets/backuphub/shop-db\" is not a credential"
      )
      (expectWarning "postgres: warning for a drill socket path too long" pgLongName
        "/var/lib/backuphub/drill/backuphub-drill-the-shop-database-on-the-rack-server-<pid>-<random>/socket/.s.PGSQL.5432, can be 115 bytes long"
      )
      (expectWarning "postgres: warning for a drill as root" pgRoot "services.backuphub.user is root, but initdb refuses root")
      (expectWarning "postgres: warning for a drill of an encrypted repository without the identity"
        pgEncryptedNoIdentity
        "jobs.shop.drill: the repository is encrypted (repository.recipients), and a drill must read the latest snapshot"
      )
      (expect "postgres: ... none with repository.identity_file" pgEncrypted.warnings [ ])
      (expect "postgres: those are warnings, not errors" (
        lib.concatMap failedAssertions [
          pgPlainPassword
          pgLongName
          pgRoot
          pgEncryptedNoIdentity
        ]
      ) [ ])
    ]
    ++ lib.mapAttrsToList (k: v: expect "postgres: hardening ${k}" ((sc' pg).${k} or "<unset>") v) hardening;

  # kubernetes jobs (see k8sWith)
  k8sChecks =
    let
      cluster = c: (pgValue c).jobs.cluster or "<unset>";
      sc' = c: (pgUnit c).serviceConfig;
      baseUnit = (pgUnit unchecked) // {
        # what depends on the settings and credentials, not on the job kinds
        serviceConfig = removeAttrs (pgUnit unchecked).serviceConfig [ "LoadCredential" "ExecStart" ];
      };
      unitWithout = c: (pgUnit c) // { serviceConfig = removeAttrs (sc' c) [ "LoadCredential" "ExecStart" ]; };
    in
    [
      (expect "kubernetes: a kubeconfig job: no failed assertions, no warnings" [ (failedAssertions k8s) k8s.warnings ] [ [ ] [ ] ])
      (expect "kubernetes: the kubeconfig job is generated as written (timezone added)" (cluster k8s) (
        k8sJob // { timezone = "UTC"; }
      ))
      (expect "kubernetes: the kubeconfig is a credential of the unit, and the setting points at it" [
        (lib.elem "kubeconfig:/etc/secrets/backuphub-kubeconfig" (sc' k8s).LoadCredential)
        (cluster k8s).kubeconfig
      ] [ true "/run/credentials/backuphub.service/kubeconfig" ])
      (expect "kubernetes: a server+token+CA job: no failed assertions, no warnings" [
        (failedAssertions k8sServer)
        k8sServer.warnings
      ] [ [ ] [ ] ])
      (expect "kubernetes: the server job is generated as written" (cluster k8sServer) (
        k8sServerJob // { timezone = "UTC"; }
      ))
      (expect "kubernetes: the token is a credential of the unit" (
        lib.elem "k8s-token:/etc/secrets/backuphub-k8s-token" (sc' k8sServer).LoadCredential
      ) true)
      (expect "kubernetes: a minimal job: nothing filled in (the daemon has the defaults)" [
        (failedAssertions k8sMinimal)
        (cluster k8sMinimal)
      ] [ [ ] { kind = "kubernetes"; schedule = "@daily"; timezone = "UTC"; kubeconfig = "${creds}/kubeconfig"; } ])
      # the daemon speaks HTTPS itself: no packages, no more writable paths or mounts, and the
      # same sandbox, which allows outbound TCP
      (expect "kubernetes: the unit is the one without the job (but for its credentials and config file)" [
        (unitWithout k8s)
        (unitWithout k8sServer)
      ] [ baseUnit baseUnit ])
      (expect "kubernetes: nothing on PATH, no more writable paths" [
        (pgUnit k8s).path
        (sc' k8s).ReadWritePaths
        ((sc' k8s).ExecStartPre or [ ])
      ] [ [ ] [ repo ] [ ] ])
      (expectTrue "kubernetes: outbound TCP allowed (AF_INET, AF_INET6; no PrivateNetwork, no IP address filter), after network-online.target" (
        lib.all (f: lib.elem f (sc' k8s).RestrictAddressFamilies) [ "AF_INET" "AF_INET6" ]
        && !((sc' k8s) ? PrivateNetwork || (sc' k8s) ? IPAddressDeny || (sc' k8s) ? IPAddressAllow)
        && lib.elem "network-online.target" (pgUnit k8s).wants
        && lib.elem "network-online.target" (pgUnit k8s).after
      ))
      (expectWarning "kubernetes: warning for a kubeconfig that is no credential" k8sPlainKubeconfig
        "services.backuphub.settings.jobs.cluster.kubeconfig = \"/etc/secrets/backuphub-kubeconfig\" is not a credential: the service user must be able to read it, and so can every command job. Pass it with services.backuphub.credentials.<name> = \"/etc/secrets/backuphub-kubeconfig\" and set kubeconfig = \"${creds}/<name>\""
      )
      (expectWarning "kubernetes: warning for a token_file that is no credential" k8sPlainToken
        "services.backuphub.settings.jobs.cluster.token_file = \"/var/lib/secrets/k8s-token\" is not a credential: the service user must be able to read it, and so can every command job. Pass it with services.backuphub.credentials.<name> = \"/var/lib/secrets/k8s-token\" and set token_file = \"${creds}/<name>\""
      )
      (expect "kubernetes: one warning each, and they are warnings, not errors" [
        (lib.length k8sPlainKubeconfig.warnings)
        (lib.length k8sPlainToken.warnings)
        (lib.concatMap failedAssertions [
          k8sPlainKubeconfig
          k8sPlainToken
        ])
      ] [ 1 1 [ ] ])
      # the daemon refuses it (`config check`, or the service's start): an error, not a warning
      (expect "kubernetes: a ca_file beside a kubeconfig fails one assertion, and warns of nothing" [
        (failedAssertions k8sCaWithKubeconfig)
        k8sCaWithKubeconfig.warnings
      ] [ [ (caWithKubeconfigMessage "cluster") ] [ ] ])
    ]
    ++ lib.mapAttrsToList (
      n: c: expect "kubernetes: accepted: ${n}" [ (failedAssertions c) c.warnings ] [ [ ] [ ] ]
    ) k8sAccepted;

  # volume jobs (see volWith): as kubernetes jobs, the daemon does it all itself
  volChecks =
    let
      volumes = c: (pgValue c).jobs.volumes or "<unset>";
      sc' = c: (pgUnit c).serviceConfig;
      baseUnit = (pgUnit unchecked) // {
        serviceConfig = removeAttrs (pgUnit unchecked).serviceConfig [ "LoadCredential" "ExecStart" ];
      };
      unitWithout = c: (pgUnit c) // { serviceConfig = removeAttrs (sc' c) [ "LoadCredential" "ExecStart" ]; };
    in
    [
      (expect "volume: a kubeconfig job: no failed assertions, no warnings" [ (failedAssertions vol) vol.warnings ] [ [ ] [ ] ])
      (expect "volume: the kubeconfig job is generated as written (timezone added)" (volumes vol) (
        volJob // { timezone = "UTC"; }
      ))
      (expect "volume: the kubeconfig is a credential of the unit, and the setting points at it" [
        (lib.elem "kubeconfig:/etc/secrets/backuphub-kubeconfig" (sc' vol).LoadCredential)
        (volumes vol).kubeconfig
      ] [ true "/run/credentials/backuphub.service/kubeconfig" ])
      (expect "volume: a server+token+CA job: no failed assertions, no warnings" [
        (failedAssertions volServer)
        volServer.warnings
      ] [ [ ] [ ] ])
      (expect "volume: the server job is generated as written" (volumes volServer) (
        volServerJob // { timezone = "UTC"; }
      ))
      (expect "volume: the token is a credential of the unit, and the setting points at it" [
        (lib.elem "k8s-token:/etc/secrets/backuphub-k8s-token" (sc' volServer).LoadCredential)
        (volumes volServer).token_file
      ] [ true "/run/credentials/backuphub.service/k8s-token" ])
      (expect "volume: a minimal job: nothing filled in (the daemon has the defaults)" [
        (failedAssertions volMinimal)
        (volumes volMinimal)
      ] [
        [ ]
        {
          kind = "volume";
          schedule = "@daily";
          timezone = "UTC";
          kubeconfig = "${creds}/kubeconfig";
          volumes = [ "immich/library" ];
        }
      ])
      # snapshots, PVCs and pods are made through the API server, the data comes over exec:
      # no packages, no devices, no more writable paths or mounts
      (expect "volume: the unit is the one without the job (but for its credentials and config file)" [
        (unitWithout vol)
        (unitWithout volServer)
      ] [ baseUnit baseUnit ])
      (expectWarning "volume: warning for a kubeconfig that is no credential" volPlainKubeconfig
        "services.backuphub.settings.jobs.volumes.kubeconfig = \"/etc/secrets/backuphub-kubeconfig\" is not a credential: the service user must be able to read it, and so can every command job. Pass it with services.backuphub.credentials.<name> = \"/etc/secrets/backuphub-kubeconfig\" and set kubeconfig = \"${creds}/<name>\""
      )
      (expectWarning "volume: warning for a token_file that is no credential" volPlainToken
        "services.backuphub.settings.jobs.volumes.token_file = \"/var/lib/secrets/k8s-token\" is not a credential: the service user must be able to read it, and so can every command job. Pass it with services.backuphub.credentials.<name> = \"/var/lib/secrets/k8s-token\" and set token_file = \"${creds}/<name>\""
      )
      (expect "volume: one warning each, and they are warnings, not errors" [
        (lib.length volPlainKubeconfig.warnings)
        (lib.length volPlainToken.warnings)
        (lib.concatMap failedAssertions [
          volPlainKubeconfig
          volPlainToken
        ])
      ] [ 1 1 [ ] ])
      (expect "volume: a ca_file beside a kubeconfig fails one assertion, and warns of nothing" [
        (failedAssertions volCaWithKubeconfig)
        volCaWithKubeconfig.warnings
      ] [ [ (caWithKubeconfigMessage "volumes") ] [ ] ])
    ]
    ++ lib.mapAttrsToList (
      n: c: expect "volume: accepted: ${n}" [ (failedAssertions c) c.warnings ] [ [ ] [ ] ]
    ) volAccepted;

  # s3 jobs (see s3With)
  s3Checks =
    let
      rgw = c: (pgValue c).jobs.rgw or "<unset>";
      sc' = c: (pgUnit c).serviceConfig;
      baseUnit = (pgUnit unchecked) // {
        serviceConfig = removeAttrs (pgUnit unchecked).serviceConfig [ "LoadCredential" "ExecStart" ];
      };
      unitWithout = c: (pgUnit c) // { serviceConfig = removeAttrs (sc' c) [ "LoadCredential" "ExecStart" ]; };
    in
    [
      (expect "s3: a job with both keys as credentials: no failed assertions, no warnings" [
        (failedAssertions s3)
        s3.warnings
      ] [ [ ] [ ] ])
      (expect "s3: the job is generated as written (timezone added)" (rgw s3) (s3Job // { timezone = "UTC"; }))
      (expect "s3: both keys are credentials of the unit, and the settings point at them" [
        (lib.elem "rgw-access-key:/etc/secrets/rgw-access-key" (sc' s3).LoadCredential)
        (lib.elem "rgw-secret-key:/etc/secrets/rgw-secret-key" (sc' s3).LoadCredential)
        (rgw s3).access_key_file
        (rgw s3).secret_key_file
      ] [ true true "${creds}/rgw-access-key" "${creds}/rgw-secret-key" ])
      (expect "s3: a minimal job: nothing filled in (the daemon has the defaults)" [
        (failedAssertions s3Minimal)
        (rgw s3Minimal)
      ] [
        [ ]
        {
          kind = "s3";
          schedule = "@daily";
          timezone = "UTC";
          endpoint = "https://s3.lan";
          access_key_file = "${creds}/rgw-access-key";
          secret_key_file = "${creds}/rgw-secret-key";
        }
      ])
      # the daemon speaks S3 itself: no packages, no more writable paths or mounts
      (expect "s3: the unit is the one without the job (but for its credentials and config file)" (
        unitWithout s3
      ) baseUnit)
      (expectWarning "s3: warning for an access_key_file that is no credential" s3PlainAccessKey
        "services.backuphub.settings.jobs.rgw.access_key_file = \"/etc/secrets/rgw-access-key\" is not a credential: the service user must be able to read it, and so can every command job. Pass it with services.backuphub.credentials.<name> = \"/etc/secrets/rgw-access-key\" and set access_key_file = \"${creds}/<name>\""
      )
      (expectWarning "s3: warning for a secret_key_file that is no credential" s3PlainSecretKey
        "services.backuphub.settings.jobs.rgw.secret_key_file = \"/var/lib/secrets/rgw-secret-key\" is not a credential: the service user must be able to read it, and so can every command job. Pass it with services.backuphub.credentials.<name> = \"/var/lib/secrets/rgw-secret-key\" and set secret_key_file = \"${creds}/<name>\""
      )
      (expect "s3: one warning each, and they are warnings, not errors" [
        (lib.length s3PlainAccessKey.warnings)
        (lib.length s3PlainSecretKey.warnings)
        (lib.concatMap failedAssertions [
          s3PlainAccessKey
          s3PlainSecretKey
        ])
      ] [ 1 1 [ ] ])
    ]
    ++ lib.mapAttrsToList (
      n: c: expect "s3: accepted: ${n}" [ (failedAssertions c) c.warnings ] [ [ ] [ ] ]
    ) s3Accepted;

  checks = [
    # the unit
    (expect "no failed assertions (base)" (failedAssertions base) [ ])
    (expect "ExecStart" sc.ExecStart "${pkgBin} daemon --config ${checkedCfg}")
    (expectTrue "config checked at build time with `backuphub config check`" (
      lib.hasInfix "${pkgBin} config check --config ${rawCfg}\n" base.services.backuphub.configFile.script
      && lib.hasInfix "cp ${rawCfg} $out" base.services.backuphub.configFile.script
    ))
    (expectTrue "Type=notify, NotifyAccess=main, WatchdogSec=120" (
      sc.Type == "notify" && sc.NotifyAccess == "main" && sc.WatchdogSec == 120
    ))
    (expect "Restart, KillSignal, TimeoutStopSec"
      [ sc.Restart sc.KillSignal sc.TimeoutStopSec ]
      [ "on-failure" "SIGTERM" 90 ]
    )
    (expect "ProcSubset is not pid (boot_id, /proc/<pid> for stale locks)" (sc.ProcSubset or "all") "all")
    (expect "RequiresMountsFor" unit.unitConfig.RequiresMountsFor [ repo ])
    (expect "ReadWritePaths" sc.ReadWritePaths [ repo ])
    (expect "LoadCredential" sc.LoadCredential [
      "api-token:/var/lib/secrets/backuphub/api-token"
      "identity:/var/lib/secrets/backuphub/age-identity.txt"
    ])
    (expect "EnvironmentFile" sc.EnvironmentFile [ "/var/lib/secrets/backuphub/env" ])
    (expect "User, Group, SupplementaryGroups"
      [ sc.User sc.Group sc.SupplementaryGroups ]
      [ "backuphub" "backuphub" [ "ceph" ] ]
    )
    (expect "no ExecStartPre without repository.create" (sc.ExecStartPre or [ ]) [ ])
    (expect "postgresqlPackage on PATH" unit.path [ pkgs.postgresql ])
    (expectTrue "wantedBy multi-user.target" (lib.elem "multi-user.target" unit.wantedBy))
    (expect "system user and group" [
      base.users.users.backuphub.isSystemUser
      base.users.users.backuphub.group
      (base.users.groups ? backuphub)
    ] [ true "backuphub" true ])
    (expectTrue "CLI in systemPackages" (lib.elem pkgs.backuphub base.environment.systemPackages))
    (expect "firewall closed by default" base.networking.firewall.allowedTCPPorts [ ])
    (expect "prometheusScrapeConfig" base.services.backuphub.prometheusScrapeConfig {
      job_name = "backuphub";
      honor_labels = true;
      static_configs = [ { targets = [ "pi:9750" ]; } ];
    })
    (expect "credentialsDirectory" base.services.backuphub.credentialsDirectory creds)
    (expect "monitoring: the package's alert rules and dashboard" base.services.backuphub.monitoring {
      prometheusRules = "/nix/store/00000000000000000000000000000000-backuphub-0.1.0/share/backuphub/alerts/backuphub.rules.yml";
      grafanaAlertRules = "/nix/store/00000000000000000000000000000000-backuphub-0.1.0/share/backuphub/alerts/grafana-provisioning.yml";
      grafanaDashboard = "/nix/store/00000000000000000000000000000000-backuphub-0.1.0/share/backuphub/dashboards/backuphub.json";
    })
    (expect "monitoring: follows services.backuphub.package" ownPackage.services.backuphub.monitoring (
      monitoringOf otherPackage
    ))
    (expect "monitoring: read-only, documented, with a defaultText"
      (lib.mapAttrs (_: o: {
        readOnly = o.readOnly or false;
        described = (o.description or "") != "";
        defaultText = o.defaultText._type or null;
      }) moduleOptions.services.backuphub.monitoring)
      (lib.genAttrs [ "grafanaAlertRules" "grafanaDashboard" "prometheusRules" ] (_: {
        readOnly = true;
        described = true;
        defaultText = "literalExpression";
      }))
    )
  ]
  ++ lib.mapAttrsToList (k: v: expect "hardening ${k}" (sc.${k} or "<unset>") v) hardening
  ++ [
    # the generated configuration (checkConfig = false: the raw file, no check derivation)
    (expect "ExecStart without checkConfig" unchecked.systemd.services.backuphub.serviceConfig.ExecStart
      "${pkgBin} daemon --config ${rawCfg}"
    )
  ]
  ++ (
    let
      # the value given to (stub) formats.toml.generate, which refuses nulls
      s = unchecked.services.backuphub.configFile.value;
    in
    [
      (expect "settings.repository" s.repository {
        path = repo;
        create = false;
        state_dir = "/var/lib/backuphub";
        identity_file = "${creds}/identity";
      })
      (expect "settings.http" s.http {
        listen = "127.0.0.1:9750";
        token_file = "${creds}/api-token";
      })
      (expect "settings.jobs.cephfs" s.jobs.cephfs {
        kind = "path";
        schedule = "0 0 3 * * *";
        timezone = "UTC";
        paths = [ "/srv/cephfs" ];
        exclude = [ "*.tmp" ];
        retention.keep_daily = 14;
      })
      (expect "settings.jobs.pgdump.timezone" s.jobs.pgdump.timezone "Europe/Berlin")
      (expect "settings.daemon (freeform)" s.daemon { concurrency = 2; })
    ]
  )
  ++ [
    # firewall
    (expect "openFirewall 0.0.0.0:9751 opens 9751" firewallOpen.networking.firewall.allowedTCPPorts [
      9751
    ])
    (expect "openFirewall 0.0.0.0:9751: no failed assertions" (failedAssertions firewallOpen) [ ])
    (expect "scrape target follows the port" firewallOpen.services.backuphub.prometheusScrapeConfig.static_configs [
      { targets = [ "pi:9751" ]; }
    ])
    (expect "openFirewall [::]:9750 opens 9750" firewallOpenV6.networking.firewall.allowedTCPPorts [
      9750
    ])
    (expect "listen 0.0.0.0 without openFirewall keeps it closed" listenWide.networking.firewall.allowedTCPPorts [ ])
    (expectAssertion "openFirewall with loopback listen" firewallLoopback "listens on loopback only")
    (expectAssertion "openFirewall with [::1] listen" firewallLoopbackV6 "listens on loopback only")

    # assertions for impossible settings
    (expectAssertion "missing repository.path" noPath "services.backuphub.settings.repository.path must be set")
    (expectAssertion "relative repository.path" relativePath "must be an absolute path, not \"backup\"")
    (expectAssertion "path job without paths" badJobs "jobs.nopaths: a job of kind \"path\" needs `paths`")
    (expectAssertion "command job without name" badJobs "jobs.noname: a job of kind \"command\" needs `name`")
    (expectAssertion "bad credential name" badCredName "credentials.\"bad/name\"")
    (expectAssertion "port 0" portZero "the port must be between 1 and 65535")
    (expect "a good configuration has none of these" (
      failedAssertions base ++ failedAssertions listenWide ++ failedAssertions created
    ) [ ])

    # repository.create, custom user, custom state_dir
    (expect "repository.create and a custom state_dir: directories made before the sandbox, owned by the user"
      created.systemd.services.backuphub.serviceConfig.ExecStartPre
      [
        "+/nix/store/00000000000000000000000000000000-coreutils-9.7/bin/install -d -m 0700 -o alice -g backuphub ${repo}"
        "+/nix/store/00000000000000000000000000000000-coreutils-9.7/bin/install -d -m 0700 -o alice -g backuphub /mnt/backup/state"
      ]
    )
    (expect "custom state_dir alone: created too" stateOnly.systemd.services.backuphub.serviceConfig.ExecStartPre [
      "+/nix/store/00000000000000000000000000000000-coreutils-9.7/bin/install -d -m 0700 -o backuphub -g backuphub /srv/backuphub-state"
    ])
    (expect "custom user: none created" (created.users.users ? backuphub) false)
    (expect "custom user: User=" created.systemd.services.backuphub.serviceConfig.User "alice")
    (expect "custom state_dir writable and mounted"
      [
        created.systemd.services.backuphub.serviceConfig.ReadWritePaths
        created.systemd.services.backuphub.unitConfig.RequiresMountsFor
      ]
      [
        [ repo "/mnt/backup/state" ]
        [ repo "/mnt/backup/state" ]
      ]
    )

    # issue 9: the module's own validation
    (expect "listen 0.0.0.0:09750 is port 9750 (as the daemon reads it), no eval error" [
      (failedAssertions leadingZeroPort)
      leadingZeroPort.networking.firewall.allowedTCPPorts
      leadingZeroPort.services.backuphub.prometheusScrapeConfig.static_configs
    ] [ [ ] [ 9750 ] [ { targets = [ "pi:9750" ]; } ] ])
    (expect "listen [fe80::1%2]:9750 accepted" (failedAssertions (
      withService { http.listen = "[fe80::1%2]:9750"; } { }
    )) [ ])
    (expect "schedules: aliases and 5 fields accepted" (failedAssertions (
      eval (withSettings {
        jobs.cephfs.schedule = "@Daily";
        jobs.pgdump.schedule = "15 2 * * *";
      })
    )) [ ])

    # issue 9: cross-compiled systems
    (expectTrue "cross: config checked with the build platform's backuphub (buildPackages), locally" (
      let
        f = cross.services.backuphub.configFile;
      in
      f.local or false
      && lib.hasInfix "/nix/store/00000000000000000000000000000000-backuphub-0.1.0/bin/backuphub config check" f.script
    ))
    (expect "cross: the service runs the host's (aarch64) binary" cross.systemd.services.backuphub.serviceConfig.ExecStart
      "/nix/store/10000000000000000000000000000000-backuphub-0.1.0/bin/backuphub daemon --config /nix/store/10000000000000000000000000000000-backuphub-config-checked"
    )
    (expect "cross without a build-platform backuphub: checkConfig defaults to off" [
      crossNoBuildPkg.services.backuphub.checkConfig
      crossNoBuildPkg.systemd.services.backuphub.serviceConfig.ExecStart
    ] [ false "/nix/store/10000000000000000000000000000000-backuphub-0.1.0/bin/backuphub daemon --config /nix/store/10000000000000000000000000000000-backuphub.toml" ])
    (expect "native: checkConfig on, with the package itself" [
      base.services.backuphub.checkConfig
      (base.services.backuphub.configFile.local or false)
    ] [ true true ])

    # issue 9: what a NixOS admin expects
    (expect "extraPackages and postgresqlPackage on PATH" [ (map (p: p.name) adminUnit.path) ] [ [ "etcd-3.5.21" ] ])
    (expect "HOME and cache directory for tools" [
      unit.environment
      sc.CacheDirectory
      sc.CacheDirectoryMode
    ] [ { HOME = "/var/cache/backuphub"; XDG_CACHE_HOME = "/var/cache/backuphub"; } "backuphub" "0700" ])
    (expect "Nice=10 and idle I/O by default" [ sc.Nice sc.IOSchedulingClass ] [ 10 "idle" ])
    (expect "Nice and IOSchedulingClass can be overridden without mkForce" (
      let
        c =
          (eval (
            lib.recursiveUpdate (withSettings { }) {
              systemd.services.backuphub.serviceConfig = {
                Nice = 0;
                IOSchedulingClass = "best-effort";
              };
            }
          )).systemd.services.backuphub.serviceConfig;
      in
      [ c.Nice c.IOSchedulingClass ]
    ) [ 0 "best-effort" ])
    (expect "readAllFiles: CAP_DAC_READ_SEARCH bounded and ambient, nothing else" [
      adminUnit.serviceConfig.CapabilityBoundingSet
      adminUnit.serviceConfig.AmbientCapabilities
    ] [ [ "CAP_DAC_READ_SEARCH" ] [ "CAP_DAC_READ_SEARCH" ] ])
    (expect "a path job below /home: ProtectHome=read-only (true otherwise)" [
      adminUnit.serviceConfig.ProtectHome
      sc.ProtectHome
    ] [ "read-only" true ])
    (expect "fixed uid and gid" [ admin.users.users.backuphub.uid admin.users.groups.backuphub.gid ] [ 975 976 ])
    (expect "no fixed uid and gid by default" [ base.users.users.backuphub.uid base.users.groups.backuphub.gid ] [ null null ])
    (expect "TimeoutStopSec = daemon.stop_timeout_secs + 30" [ sc.TimeoutStopSec adminUnit.serviceConfig.TimeoutStopSec ] [ 90 330 ])
    (expect "ordered after time-sync.target (a Pi has no RTC) and network-online.target" unit.after [
      "network-online.target"
      "time-sync.target"
    ])
    (expect "meta: no maintainers (only lib.maintainers entries are allowed), a manual chapter" [
      base.meta.maintainers
      (builtins.pathExists base.meta.doc)
      (lib.hasSuffix "nix/module.md" (toString base.meta.doc))
    ] [ [ ] true true ])
    (expectTrue "ExecStart uses lib.getExe (meta.mainProgram)" (lib.hasPrefix "${pkgBin} daemon" sc.ExecStart))
    (expect "admin command installed" (map (p: p.name) base.environment.systemPackages) [
      "backuphub-0.1.0"
      "backuphub-admin"
    ])
    (expectTrue "admin command: systemd-run as the service user with repository, state dir and config" (
      let
        t = adminScript.text;
      in
      lib.all (x: lib.hasInfix x t) [
        "/nix/store/00000000000000000000000000000000-systemd-258.2/bin/systemd-run"
        "-p User=backuphub -p Group=backuphub"
        "-p RequiresMountsFor=${repo}"
        "-E BACKUPHUB_REPO=${repo}"
        "-E BACKUPHUB_STATE_DIR=/var/lib/backuphub"
        "-E BACKUPHUB_CONFIG=${checkedCfg}"
        "LoadCredential=identity:$file"
        "-- ${pkgBin} \"\${args[@]}\""
      ]
    ))
    (expectTrue "admin command: supplementary groups and environment file of the service" (
      let
        t = (lib.head (lib.filter (p: p.name == "backuphub-admin") admin.environment.systemPackages)).text;
      in
      lib.hasInfix "-p SupplementaryGroups=ceph" t
      && lib.hasInfix "-p EnvironmentFile=/var/lib/secrets/backuphub/env" t
    ))
    # `backuphub-admin run JOB` runs a command job as the daemon would: its tools on PATH
    # (a transient unit gets no NixOS service PATH), and readAllFiles' capability.
    (expectTrue "admin command: the service's PATH and readAllFiles' capability" (
      let
        t = (lib.head (lib.filter (p: p.name == "backuphub-admin") admin.environment.systemPackages)).text;
      in
      lib.hasInfix "-E PATH=/nix/store/00000000000000000000000000000000-etcd-3.5.21/bin:/run/current-system/sw/bin " t
      && lib.hasInfix "-p AmbientCapabilities=CAP_DAC_READ_SEARCH " t
    ))
    (expectTrue "admin command: postgresqlPackage on PATH; without readAllFiles no capability" (
      lib.hasInfix "-E PATH=/nix/store/00000000000000000000000000000000-postgresql-17.6/bin:/run/current-system/sw/bin " adminScript.text
      && !lib.hasInfix "AmbientCapabilities" adminScript.text
    ))

    # disabled: nothing at all
    (expect "disabled: no unit, no user, no port" [
      disabled.systemd.services
      disabled.users.users
      disabled.networking.firewall.allowedTCPPorts
      disabled.assertions
    ] [ { } { } [ ] [ ] ])
  ]
  ++ lib.mapAttrsToList (n: c: expectAssertion "assertion: ${n}" c.config c.message) invalid
  ++ lib.mapAttrsToList (n: c: expectAssertion "assertion: ${n}" c.config c.message) invalidPostgres
  ++ pgChecks
  ++ lib.mapAttrsToList (n: c: expectAssertion "assertion: ${n}" c.config c.message) invalidKubernetes
  ++ k8sChecks
  ++ lib.mapAttrsToList (n: c: expectAssertion "assertion: ${n}" c.config c.message) invalidVolume
  ++ volChecks
  ++ lib.mapAttrsToList (n: c: expectAssertion "assertion: ${n}" c.config c.message) invalidS3
  ++ s3Checks
  ++ lib.mapAttrsToList (n: c: expectTrue "does not evaluate: ${n}" (fails c)) badCases
  ++ [
    # flake.lock
    (expect "flake.lock version and root" [ lock.version lock.root lock.nodes.root ] [
      7
      "root"
      { inputs.nixpkgs = "nixpkgs"; }
    ])
    (expect "flake.lock nodes" (lib.attrNames lock.nodes) [ "nixpkgs" "root" ])
    (expect "flake.lock nixpkgs node = nixpkgs-pin.md" lock.nodes.nixpkgs pin)
    (expectTrue "pin has rev and narHash" (
      lib.stringLength pin.locked.rev == 40 && lib.hasPrefix "sha256-" pin.locked.narHash
    ))
  ]
  ++ [
    # flake.nix
    (expect "flake inputs: nixpkgs only, the pinned branch" flake.inputs {
      nixpkgs.url = "github:${pin.original.owner}/${pin.original.repo}/${pin.original.ref}";
    })
    (expect "flake outputs" (lib.attrNames outputs) [
      "checks"
      "devShells"
      "formatter"
      "nixosModules"
      "overlays"
      "packages"
    ])
    (expect "flake systems" (map (o: lib.attrNames outputs.${o}) [
      "checks"
      "devShells"
      "formatter"
      "packages"
    ]) [ systems systems systems systems ])
    (expect "packages.<system>.default" (map (sys: {
      inherit (outputs.packages.${sys}.default) name system;
    }) systems) (map (system: {
      name = "backuphub-${cargoToml.package.version}";
      inherit system;
    }) systems))
    (expect "checks.<system>" (map (sys: lib.attrNames outputs.checks.${sys}) systems) [
      [ "package" "vm" ]
      [ "package" "vm" ]
    ])
    (expect "nixosModules.default is module.nix" outputs.nixosModules.default ../../module.nix)
    (expect "formatter is nixfmt" outputs.formatter.x86_64-linux.name "nixfmt-1.1.0")
    (expectTrue "devShell builds on the package" (
      outputs.devShells.x86_64-linux.default.args.inputsFrom == [ outputs.packages.x86_64-linux.default ]
    ))

    # nix/package.nix
    (expect "package: Cargo.lock, no output hashes" pkgArgs.cargoLock { lockFile = ../../Cargo.lock; })
    (expect "package: cargo test --lib + repo_*/cli_* tests" pkgArgs.cargoTestFlags (
      [ "--lib" ] ++ map (n: "--test=${n}") offlineTests
    ))
    (expectTrue "package: no pg_/s3_/daemon_ tests" (
      !lib.any (
        f: lib.any (p: lib.hasPrefix "--test=${p}" f) [
          "pg_"
          "s3_"
          "daemon_"
        ]
      ) pkgArgs.cargoTestFlags
    ))
    (expect "package: meta"
      {
        inherit (pkgArgs.meta) description mainProgram platforms homepage;
        license = pkgArgs.meta.license.spdxId;
      }
      {
        inherit (cargoToml.package) description;
        homepage = cargoToml.package.homepage or cargoToml.package.repository;
        mainProgram = "backuphub";
        platforms = lib.platforms.linux;
        license = cargoToml.package.license;
      }
    )
    (expectTrue "package: postInstall installs the dashboard, both alert files and deploy/kubernetes (run.sh runs it)" (
      lib.all (x: lib.hasInfix x (pkgArgs.postInstall or "")) [
        "dashboards/backuphub.json"
        "alerts/backuphub.rules.yml"
        "alerts/grafana-provisioning.yml"
        "deploy/kubernetes/*.yaml"
        "-Dm755 deploy/kubernetes/make-kubeconfig.sh"
        "$out/share/backuphub/dashboards"
        "$out/share/backuphub/alerts"
        "$out/share/backuphub/kubernetes"
      ]
    ))
    (expect "package: the source has what postInstall installs"
      (map (p: inPkgSrc "regular" p) installedFiles ++ map (inPkgSrc "directory") [
        ../../dashboards
        ../../alerts
        ../../deploy/kubernetes
      ])
      (map (_: true) installedFiles ++ [ true true true ])
    )
    (expect "package: the source still leaves out tests/nix, bench/ and README.md" [
      (inPkgSrc "directory" ../../tests/nix)
      (inPkgSrc "regular" ../../tests/nix/eval.nix)
      (inPkgSrc "directory" ../../bench)
      (inPkgSrc "regular" ../../README.md)
    ] [ false false false false ])
    (expect "Cargo.toml's licence is Apache-2.0" cargoToml.package.license "Apache-2.0")
    (expectTrue "LICENSE is the Apache License 2.0 text" (
      let
        text = builtins.readFile ../../LICENSE;
      in
      lib.hasInfix "Apache License" text
      && lib.hasInfix "Version 2.0, January 2004" text
      && lib.hasInfix "END OF TERMS AND CONDITIONS" text
    ))
    (expectTrue "description names what the release does (every job kind)" (
      lib.all (k: lib.hasInfix k pkgArgs.meta.description) [ "PostgreSQL" "Kubernetes" "volumes" "S3" "local paths" "command output" ]
    ))

    # nix/tests/vm.nix
    (expect "vm: no failed assertions" (failedAssertions vmNode) [ ])
    (expect "vm: started by the test script, after PostgreSQL" [ vmUnit.wantedBy (lib.elem "postgresql.service" vmUnit.after) ] [ [ ] true ])
    (expect "vm: pg_dumpall on PATH" (map (p: p.name) vmUnit.path) [ "postgresql-17.6" ])
    (expect "vm: repository created on the data disk" vmUnit.serviceConfig.ExecStartPre [
      "+/nix/store/00000000000000000000000000000000-coreutils-9.7/bin/install -d -m 0700 -o backuphub -g backuphub /mnt/backup/backuphub"
    ])
    (expectTrue "vm: a data disk larger than min_free_space (1 GiB) plus room, mounted where the repository lives" (
      let
        fs = vmNode.virtualisation.fileSystems."/mnt/backup" or null;
      in
      vmNode.virtualisation.emptyDiskImages == [ 4096 ]
      && fs != null
      && fs.device == "/dev/vdb"
      && fs.autoFormat
      && vmUnit.unitConfig.RequiresMountsFor == [ "/mnt/backup/backuphub" ]
      && !(vmNode.services.backuphub.settings ? daemon)
    ))
    (expectTrue "vm: encrypted repository, API token as a credential" (
      lib.length vmNode.services.backuphub.settings.repository.recipients == 1
      && vmUnit.serviceConfig.LoadCredential == [ "api-token:/var/lib/secrets/backuphub/api-token" ]
      && vmNode.services.backuphub.settings.http.token_file == "${creds}/api-token"
    ))
    (expect "vm: job kinds" (lib.mapAttrs (_: j: j.kind) vmNode.services.backuphub.settings.jobs) {
      data = "path";
      pgdump = "command";
    })
    (expectTrue "vm: script restores both jobs with backuphub-admin and the identity" (
      lib.all (x: lib.hasInfix x vmTest.testScript) [
        "backuphub-admin cat --identity /root/identity.txt latest:pgdump all.sql"
        "backuphub-admin restore --identity /root/identity.txt latest:data --target '{target}'"
        "target = \"/tmp/restore \${HOME}\""
        "assert value == \"hello from backuphub\""
        "assert content == \"hello from the path job\""
        "wait_for_unit(\"mnt-backup.mount\")"
        # the restore without the identity must fail asking for it, not just fail
        "assert \"--identity\" in err"
      ]
    ))
  ]
  ++ [
    # README.md: the Pi example
    (expectTrue "README: pi.nix example given (--arg piExample FILE)" (piExample != null))
    (expect "README: no failed assertions" (failedAssertions pi) [ ])
    (expect "README: disk, firewall, credentials"
      [
        pi.fileSystems."/mnt/backup".options
        piUnit.unitConfig.RequiresMountsFor
        pi.networking.firewall.allowedTCPPorts
        (map (lib.head) (map (lib.splitString ":") piUnit.serviceConfig.LoadCredential))
      ]
      [
        [ "nofail" "noatime" "x-systemd.device-timeout=10s" ]
        [ "/mnt/backup/backuphub" ]
        [ 9750 ]
        [ "api-token" "etcd-ca" "etcd-cert" "etcd-key" ]
      ]
    )
    (expect "README: jobs" (lib.mapAttrs (_: j: j.kind) pi.services.backuphub.settings.jobs) {
      cephfs = "path";
      etcd = "command";
    })
    (expectTrue "README: settings refer to credentials, not secrets; no identity on the Pi" (
      !(pi.services.backuphub.settings.repository ? identity_file)
      && pi.services.backuphub.settings.http.token_file == "${creds}/api-token"
    ))
  ]
  ++ [
    # nix/module.md: the postgres example
    (expectTrue "module.md: postgres example given (--arg postgresExample FILE)" (postgresExample != null))
    (expect "module.md: no failed assertions, no warnings" [ (failedAssertions pgDoc) pgDoc.warnings ] [ [ ] [ ] ])
    (expect "module.md: the job as generated"
      [
        (pgDocJob.bin_dirs or null)
        (pgDocJob.drill.server_bin_dir or null)
        (pgDocJob.drill.work_dir or null)
        (pgDocJob.password_file or null)
        (pgDoc.services.backuphub.settings.repository.identity_file or null)
      ]
      [
        [ "${pgStore "postgresql-17.6"}/bin" ]
        "${pgStore "postgresql-17.6"}/bin"
        "/mnt/backup/drill"
        "${creds}/shop-db"
        "${creds}/identity"
      ]
    )
    (expect "module.md: credentials, PATH, the work directory writable"
      [
        (map (lib.head) (map (lib.splitString ":") pgDocUnit.serviceConfig.LoadCredential))
        (map (p: p.name) pgDocUnit.path)
        pgDocUnit.serviceConfig.ReadWritePaths
      ]
      [
        [ "identity" "shop-db" ]
        [ "postgresql-17.6" ]
        [ "/mnt/backup/backuphub" "/mnt/backup/drill" ]
      ]
    )
  ]
  ++ [
    # nix/module.md: the kubernetes example
    (expectTrue "module.md: kubernetes example given (--arg kubernetesExample FILE)" (kubernetesExample != null))
    (expect "module.md: kubernetes: no failed assertions, no warnings" [ (failedAssertions k8sDoc) k8sDoc.warnings ] [
      [ ]
      [ ]
    ])
    (expect "module.md: kubernetes: the kubeconfig from services.backuphub.credentials, nothing on PATH"
      [
        (k8sDocJob.kind or null)
        (k8sDocJob.kubeconfig or null)
        (k8sDocUnit.serviceConfig.LoadCredential or null)
        (k8sDocUnit.path or null)
      ]
      [
        "kubernetes"
        "${creds}/kubeconfig"
        [ "kubeconfig:/etc/secrets/backuphub-kubeconfig" ]
        [ ]
      ]
    )
    (expectTrue "module.md: names deploy/kubernetes/, which has rbac.yaml and make-kubeconfig.sh" (
      lib.hasInfix "`deploy/kubernetes/`" (builtins.readFile base.meta.doc)
      && builtins.pathExists ../../deploy/kubernetes/rbac.yaml
      && builtins.pathExists ../../deploy/kubernetes/make-kubeconfig.sh
    ))
  ]
  ++ [
    # nix/module.md: the volume example
    (expectTrue "module.md: volume example given (--arg volumeExample FILE)" (volumeExample != null))
    (expect "module.md: volume: no failed assertions, no warnings" [ (failedAssertions volDoc) volDoc.warnings ] [
      [ ]
      [ ]
    ])
    (expect "module.md: volume: a filesystem and a block volume, the kubeconfig from services.backuphub.credentials, nothing on PATH"
      [
        (volDocJob.kind or null)
        (volDocJob.volumes or null)
        (volDocJob.kubeconfig or null)
        (volDocUnit.serviceConfig.LoadCredential or null)
        (volDocUnit.path or null)
      ]
      [
        "volume"
        [ "immich/library" "database/data-postgresql-0" ]
        "${creds}/kubeconfig"
        [ "kubeconfig:/etc/secrets/backuphub-kubeconfig" ]
        [ ]
      ]
    )
    (expectTrue "module.md: volume: needs rbac.yaml plus volume-rbac.yaml, which exist" (
      lib.hasInfix "`deploy/kubernetes/rbac.yaml` plus `deploy/kubernetes/volume-rbac.yaml`" (builtins.readFile base.meta.doc)
      && builtins.pathExists ../../deploy/kubernetes/rbac.yaml
      && builtins.pathExists ../../deploy/kubernetes/volume-rbac.yaml
    ))
  ]
  ++ [
    # nix/module.md: the s3 example
    (expectTrue "module.md: s3 example given (--arg s3Example FILE)" (s3Example != null))
    (expect "module.md: s3: no failed assertions, no warnings" [ (failedAssertions s3Doc) s3Doc.warnings ] [
      [ ]
      [ ]
    ])
    (expect "module.md: s3: the RGW's keys from services.backuphub.credentials, nothing on PATH"
      [
        (s3DocJob.kind or null)
        (s3DocJob.endpoint or null)
        (s3DocJob.access_key_file or null)
        (s3DocJob.secret_key_file or null)
        (s3DocUnit.serviceConfig.LoadCredential or null)
        (s3DocUnit.path or null)
      ]
      [
        "s3"
        "http://10.0.0.30:7480"
        "${creds}/rgw-access-key"
        "${creds}/rgw-secret-key"
        [
          "rgw-access-key:/etc/secrets/rgw-access-key"
          "rgw-secret-key:/etc/secrets/rgw-secret-key"
        ]
        [ ]
      ]
    )
    (expectTrue "module.md: restoring into the Pi's MinIO: backuphub-admin restore-s3" (
      lib.hasInfix "backuphub-admin restore-s3 " (builtins.readFile base.meta.doc)
    ))
  ]
  ++ [
    # nix/module.md: the monitoring host
    (expectTrue "module.md: monitoring example given (--arg monitoringExample FILE)" (monitoringExample != null))
    (expect "module.md: monitoring: Prometheus gets the Pi's scrape configuration and rules, Grafana its dashboard"
      [
        monDoc.services.prometheus.ruleFiles
        (map (c: c.job_name) monDoc.services.prometheus.scrapeConfigs)
        (map (p: p.options.path) (monDoc.services.grafana.provision.dashboards.settings.providers or [ ]))
        (monDoc.services.grafana.provision.alerting.rules.path)
      ]
      [
        [ base.services.backuphub.monitoring.prometheusRules ]
        [ "backuphub" ]
        [ base.services.backuphub.monitoring.grafanaDashboard ]
        null
      ]
    )
    (expectTrue "module.md: Grafana-managed alerts example given (--arg grafanaAlertsExample FILE)" (
      grafanaAlertsExample != null
    ))
    (expect "module.md: Grafana-managed alerts: the Pi's rules file, DS_PROMETHEUS for its data source, no Prometheus rules"
      [
        alertsDoc.services.grafana.provision.alerting.rules.path
        (alertsDoc.systemd.services.grafana.environment ? DS_PROMETHEUS)
        alertsDoc.services.prometheus.ruleFiles
      ]
      [ base.services.backuphub.monitoring.grafanaAlertRules true [ ] ]
    )
    (expectTrue "module.md: names each of services.backuphub.monitoring" (
      lib.all (o: lib.hasInfix "`services.backuphub.monitoring.${o}`" (builtins.readFile base.meta.doc)) [
        "prometheusRules"
        "grafanaAlertRules"
        "grafanaDashboard"
      ]
    ))
  ]
  ++ lib.optional selfTest (expectTrue "self-test: this expectation must fail" false);

  failures = lib.filter (c: !c.ok) checks;
in
if print == "admin" then
  adminScript.text
else if print == "vm-script" then
  vmTest.testScript
else if print == "postInstall" then
  pkgArgs.postInstall
else if print == "monitoring" then
  base.services.backuphub.monitoring
else if case != null then
  force badCases.${case}
else if failures == [ ] then
  {
    passed = lib.length checks;
    failed = 0;
    checks = map (c: c.name) checks;
  }
else
  throw (
    "backuphub module eval: ${toString (lib.length failures)} of ${toString (lib.length checks)} expectations failed:\n"
    + lib.concatMapStrings (c: "  FAIL ${c.name}: ${c.detail}\n") failures
  )
