using Xunit;

namespace BlockRepl.Tests.Integration;

/// <summary>
/// The image's filesystem runs out of space: the client gets ENOSPC for the writes that did not fit, the
/// daemon keeps serving, what did fit reads back, and status counts the errors. Uses a 4 MiB tmpfs that
/// the test mounts (root, as make test runs) under a 64 MiB sparse image.
/// </summary>
public sealed class FullDiskTests
{
    [Fact]
    public async Task Write_FilesystemFull_ClientGetsEnospcAndDaemonKeepsServing()
    {
        using var dir = new TempDirectory();
        var mountPoint = dir.PathOf("data");
        Directory.CreateDirectory(mountPoint);
        var mount = await Tool.RunAsync("mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", mountPoint);
        Assert.True(mount.ExitCode == 0, $"this test mounts a 4 MiB tmpfs and needs root: {mount}");
        try
        {
            await using (var daemon = await DaemonProcess.StartAsync(dir, size: "64M"))
            {
                // 2 MiB fits; 8 MiB more cannot.
                (await Tool.RunAsync("qemu-io", "-f", "raw", "-c", "write -P 0x5a 0 2M", daemon.NbdUri)).EnsureSuccess();
                var full = await Tool.RunAsync("qemu-io", "-f", "raw", "-c", "write -P 0x6b 16M 8M", daemon.NbdUri);
                Assert.Contains("No space left on device", full.Stdout + full.Stderr, StringComparison.Ordinal);

                // The daemon still serves: the first write reads back, and a write into space freed by a trim succeeds.
                (await Tool.RunAsync("qemu-io", "-f", "raw", "-c", "read -P 0x5a 0 2M", daemon.NbdUri)).EnsureSuccess();
                (await Tool.RunAsync("qemu-io", "-f", "raw", "-c", "discard 16M 8M", "-c", "discard 0 2M", "-c", "write -P 0x7c 0 1M", "-c", "read -P 0x7c 0 1M", daemon.NbdUri)).EnsureSuccess();

                var status = await Tool.RunAsync(RepoLayout.DaemonBinary, "status", "--admin", daemon.AdminAddress, "--json");
                status.EnsureSuccess();
                using var json = System.Text.Json.JsonDocument.Parse(status.Stdout);
                var errors = json.RootElement.GetProperty("volumes")[0].GetProperty("counters").GetProperty("errors").GetInt64();
                Assert.True(errors >= 1, $"status counted {errors} errors after an ENOSPC");
                await daemon.StopAsync();
            }
        }
        finally
        {
            await Tool.RunAsync("umount", "-l", mountPoint);
        }
    }
}
