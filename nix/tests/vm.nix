# NixOS VM test: `nix flake check` (or `nix build .#checks.x86_64-linux.vm`).
# `pkgs` must contain backuphub (the flake passes nixpkgs with overlays.default).
#
# The machine is set up like the Pi: the repository on a separate data disk (mounted at
# /mnt/backup, so RequiresMountsFor= is exercised), encrypted to a public key, the API token a
# credential of the unit, the identity only handed to backuphub-admin for the restores.
{ pkgs }:

let
  # A key pair for this test only (age-keygen); the identity is no secret of anybody's.
  testRecipient = "age1nejytmrmjc4wf9w6zj8cyjlz54cu6exl5kz9vx3c2k0qqt4cwpdsy65tua";
  testIdentity = "AGE-SECRET-KEY-1E53T266HDVFA6UTTMUTQN4FWVSWW0AJM629NHY73WGF5RPRKR3XSVR7XZ5";
  apiToken = "test-token-0123456789";
in
pkgs.testers.runNixOSTest {
  name = "backuphub";

  nodes.machine =
    {
      config,
      pkgs,
      lib,
      ...
    }:
    {
      imports = [ ../../module.nix ];

      virtualisation.memorySize = 1024;
      # The data disk (/dev/vdb, 4 GiB): the daemon refuses to write below
      # daemon.min_free_space (1 GiB), more than the root disk of a test VM has free.
      virtualisation.emptyDiskImages = [ 4096 ];
      # In a test VM, virtualisation.fileSystems replaces fileSystems (qemu-vm.nix).
      virtualisation.fileSystems."/mnt/backup" = {
        device = "/dev/vdb";
        fsType = "ext4";
        autoFormat = true;
      };

      environment.systemPackages = [
        pkgs.curl
        pkgs.jq
      ];

      # what the path job backs up
      systemd.tmpfiles.rules = [
        "d /srv/data 0755 root root -"
        "f /srv/data/hello.txt 0644 root root - hello from the path job"
      ];

      services.postgresql = {
        enable = true;
        # test only: any local user may connect as any role (the daemon dumps as "postgres")
        authentication = lib.mkForce "local all all trust";
      };

      services.backuphub = {
        enable = true;
        postgresqlPackage = config.services.postgresql.package;
        # written by the test script before the service starts, as an admin would
        credentials.api-token = "/var/lib/secrets/backuphub/api-token";
        settings = {
          repository = {
            path = "/mnt/backup/backuphub";
            create = true;
            recipients = [ testRecipient ];
          };
          http.token_file = "${config.services.backuphub.credentialsDirectory}/api-token";
          jobs = {
            data = {
              kind = "path";
              schedule = "0 0 3 * * *";
              paths = [ "/srv/data" ];
            };
            pgdump = {
              kind = "command";
              schedule = "0 15 3 * * *";
              command = [
                "pg_dumpall"
                "-h"
                "/run/postgresql"
                "-U"
                "postgres"
              ];
              name = "all.sql";
            };
          };
        };
      };

      # Started by the test script once the database holds the row to compare.
      systemd.services.backuphub = {
        wantedBy = lib.mkForce [ ];
        after = [ "postgresql.service" ];
      };
    };

  testScript = ''
    token = "${apiToken}"

    def psql(sql, db="postgres"):
        return machine.succeed(f"psql -U postgres -d {db} -tAc \"{sql}\"").strip()

    def run_job(job):
        machine.succeed(
            f"curl -sf -X POST -H 'Authorization: Bearer {token}' http://127.0.0.1:9750/api/v1/jobs/{job}/run"
        )
        machine.wait_until_succeeds(
            "curl -sf http://127.0.0.1:9750/api/v1/status"
            f" | jq -e '.jobs[] | select(.name == \"{job}\") | .last_run.status == \"complete\"'",
            timeout=300,
        )

    machine.wait_for_unit("postgresql.service")
    machine.wait_for_unit("mnt-backup.mount")
    psql("CREATE DATABASE drill")
    psql("CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t VALUES (1, 'hello from backuphub')", db="drill")

    # secrets outside the store, readable by root only
    machine.succeed(
        "install -d -m 0700 /var/lib/secrets/backuphub",
        "printf %s ${apiToken} > /var/lib/secrets/backuphub/api-token",
        "printf '%s\\n' ${testIdentity} > /root/identity.txt",
        "chmod 0600 /var/lib/secrets/backuphub/api-token /root/identity.txt",
    )

    machine.succeed("systemctl start backuphub.service")  # Type=notify: returns once READY=1
    machine.wait_for_open_port(9750)
    machine.succeed("curl -sf http://127.0.0.1:9750/healthz")
    machine.succeed("curl -sf http://127.0.0.1:9750/readyz")

    with subtest("the repository is on the data disk, and the unit requires its mount"):
        machine.succeed("test \"$(findmnt -n -o SOURCE --target /mnt/backup/backuphub)\" = /dev/vdb")
        machine.succeed("systemctl show backuphub.service -p RequiresMountsFor | grep -q /mnt/backup/backuphub")
        machine.succeed("systemctl show backuphub.service -p Requires | grep -q mnt-backup.mount")
        machine.succeed("test \"$(stat -c %U /mnt/backup/backuphub)\" = backuphub")

    with subtest("both jobs complete"):
        run_job("data")
        run_job("pgdump")

    with subtest("metrics"):
        machine.succeed(
            "curl -sf http://127.0.0.1:9750/metrics | grep -q backuphub_job_last_success_timestamp_seconds"
        )

    with subtest("the repository is encrypted: no restore without the identity"):
        # fails for that reason, not for any other (a broken admin command fails too)
        err = machine.fail("backuphub-admin cat latest:pgdump all.sql 2>&1 >/dev/null")
        assert "--identity" in err, f"expected a request for --identity, got: {err!r}"

    with subtest("restore the dump"):
        psql("DROP DATABASE drill")
        machine.fail("psql -U postgres -d drill -c 'SELECT 1'")
        # as the service user, the identity handed over as a credential of the transient unit
        machine.succeed(
            "backuphub-admin cat --identity /root/identity.txt latest:pgdump all.sql > /tmp/all.sql"
        )
        # the dump also re-creates existing roles; psql reports those errors and goes on
        machine.succeed("psql -U postgres -d postgres -f /tmp/all.sql")
        value = psql("SELECT v FROM t WHERE id = 1", db="drill")
        assert value == "hello from backuphub", f"restored row: {value!r}"

    with subtest("restore the path job"):
        # a space and "''${HOME}" in the target: backuphub-admin must pass it on verbatim (systemd
        # expands variables in a transient unit's command line unless told not to)
        target = "/tmp/restore ''${HOME}"
        machine.succeed(f"install -d -o backuphub -g backuphub '{target}'")
        machine.succeed(
            f"backuphub-admin restore --identity /root/identity.txt latest:data --target '{target}'"
        )
        restored = machine.succeed(f"find '{target}' -name hello.txt -type f").strip()
        assert restored != "", "hello.txt was not restored"
        content = machine.succeed(f"cat '{restored}'")
        assert content == "hello from the path job", f"restored file: {content!r}"

    with subtest("nothing the admin command wrote is owned by root"):
        machine.succeed("test -z \"$(find /mnt/backup/backuphub /var/lib/backuphub -user root)\"")

    with subtest("hardening"):
        machine.succeed("systemctl show backuphub.service -p ProtectSystem | grep -qx ProtectSystem=strict")
        machine.succeed("systemctl show backuphub.service -p IOSchedulingClass | grep -Eqx 'IOSchedulingClass=(3|idle)'")
  '';
}
