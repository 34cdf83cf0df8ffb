using System.Text.Json;
using Xunit;

namespace BlockRepl.Tests.Integration;

/// <summary>fio's nbd engine (libnbd): queue depth 16, every block checksummed on write and verified after.</summary>
public sealed class FioTests
{
    [Fact]
    public async Task Fio_RandWriteQd16WithCrc32cVerify_NoVerifyErrors()
    {
        using var dir = new TempDirectory();
        await using var daemon = await DaemonProcess.StartAsync(dir, size: "64M");
        var output = dir.PathOf("fio.json");

        // A fixed amount of I/O rather than --runtime: fio skips the verify phase when the runtime cap ends the
        // write phase. 16 MiB of distinct random 4 KiB blocks (fio's random map) takes a second or two.
        var result = await Tool.RunAsync(
            "fio",
            [
                "--name=randwrite-verify", "--ioengine=nbd", $"--uri={daemon.NbdUri}",
                "--rw=randwrite", "--bs=4k", "--iodepth=16", "--size=64M", "--io_size=16M",
                "--verify=crc32c", "--do_verify=1", "--verify_fatal=1",
                "--output-format=json", $"--output={output}",
            ],
            Tool.DefaultTimeout);
        var report = File.Exists(output) ? await File.ReadAllTextAsync(output) : "(no output file)";
        Assert.True(result.ExitCode == 0, $"fio exited with code {result.ExitCode}\n{result}\n{report}");
        Assert.DoesNotContain("verify:", result.Stderr, StringComparison.Ordinal);

        using var json = JsonDocument.Parse(report);
        var job = Assert.Single(json.RootElement.GetProperty("jobs").EnumerateArray());
        Assert.Equal(0, job.GetProperty("error").GetInt32());
        var written = job.GetProperty("write").GetProperty("io_bytes").GetInt64();
        var verified = job.GetProperty("read").GetProperty("io_bytes").GetInt64();
        Assert.Equal(16L * TestData.MiB, written);
        Assert.True(verified == written, $"fio verified {verified} of {written} written bytes");

        await daemon.StopAsync();
    }
}
