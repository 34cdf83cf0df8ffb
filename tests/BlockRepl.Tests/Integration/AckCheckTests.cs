using System.Buffers.Binary;
using System.Globalization;
using System.Security.Cryptography;
using System.Text.RegularExpressions;
using Xunit;
using Xunit.Abstractions;

namespace BlockRepl.Tests.Integration;

/// <summary>
/// tools/ackcheck.py, the acknowledged-write checker the replication milestone runs across failovers: here it
/// proves the standalone daemon's FLUSH/FUA durability across kill -9 cycles, and that it does fail when a block
/// is corrupted or rolled back behind the daemon's back.
/// </summary>
[Collection(DaemonCollection.Name)]
public sealed partial class AckCheckTests(ITestOutputHelper output)
{
    private const int BlockSize = 4096;

    private static string Script => Path.Combine(RepoLayout.Root, "tools", "ackcheck.py");

    [Fact]
    public async Task Write_Kill9AndRestartFiveTimes_VerifyDurableFindsNoLostOrCorruptWrite()
    {
        await EnsureLibnbdAsync();
        using var dir = new TempDirectory();
        var state = dir.PathOf("ack.state");
        var random = new Random(20261122);
        var clock = System.Diagnostics.Stopwatch.StartNew();
        var daemon = await DaemonProcess.StartAsync(dir, size: "64M");
        try
        {
            long previousSent = 0;
            var killsMidRun = 0;
            for (var cycle = 1; killsMidRun < 5; cycle++)
            {
                // A kill that lands after the 2 s run ended (a stalled test host) still gets verified, but does not
                // count; more than 3 of those fail the test.
                Assert.True(cycle <= 8, $"only {killsMidRun} of {cycle - 1} kills landed while the writer was running");
                WriterSummary summary;
                TimeSpan killedAfter;
                await using (var writer = ChildProcess.Start(Script,
                [
                    "write", "--uri", daemon.NbdUri, "--state", state, "--seconds", "2", "--flush-every", "50",
                    "--fua-ratio", "0.1", "--seed", (100 + cycle).ToString(CultureInfo.InvariantCulture),
                ]))
                {
                    await writer.WaitForLineAsync(l => l.StartsWith("ackcheck: writer connected", StringComparison.Ordinal), "ackcheck writer start");
                    var sinceStart = System.Diagnostics.Stopwatch.StartNew();
                    await Task.Delay(600 + random.Next(600));
                    killedAfter = sinceStart.Elapsed;
                    await daemon.Kill9Async();
                    var exitCode = await writer.WaitForExitAsync();
                    Assert.True(exitCode == 0, $"cycle {cycle}: the writer exited with {exitCode} after the daemon died.\n{writer.Describe()}");
                    summary = ParseWriterSummary(writer.StdoutLines, writer.Describe());
                    if (summary.Ended.StartsWith("connection lost", StringComparison.Ordinal))
                    {
                        killsMidRun++;
                    }
                    else
                    {
                        Assert.True(summary.Ended == "done", $"cycle {cycle}: the writer ended with '{summary.Ended}'.\n{writer.Describe()}");
                        output.WriteLine($"cycle {cycle}: the kill came {killedAfter.TotalSeconds:F1} s after the writer started, after it had finished");
                    }
                }

                Assert.True(summary.Durable > 0 && summary.Acked >= summary.Durable && summary.Sent >= summary.Acked,
                    $"cycle {cycle}: implausible writer counts {summary}");

                await daemon.DisposeAsync();
                daemon = await DaemonProcess.StartAsync(dir, size: "64M");

                var durable = await VerifyAsync(daemon, state, "durable");
                Assert.True(durable.ExitCode == 0 && durable.Lost == 0 && durable.Corrupt == 0 && durable.Checked > 0,
                    $"cycle {cycle}: verify --mode durable after kill -9: {durable}");
                Assert.Equal(cycle, durable.Runs);
                // S lines are written before a batch is sent, so a batch cut short by the crash may add up to --depth more.
                Assert.True(durable.TotalSent >= previousSent + summary.Sent && durable.TotalSent <= previousSent + summary.Sent + 32,
                    $"cycle {cycle}: the state file should hold {previousSent} + {summary.Sent} (+ up to 32) sent writes: {durable}");
                previousSent = durable.TotalSent;

                // kill -9 of a process does not lose the page cache, so every acknowledged write is still there too.
                var acked = await VerifyAsync(daemon, state, "acked");
                Assert.True(acked.ExitCode == 0 && acked.Lost == 0 && acked.Corrupt == 0,
                    $"cycle {cycle}: verify --mode acked after kill -9: {acked}");
                output.WriteLine($"{clock.Elapsed.TotalSeconds:F1} s cycle {cycle}: kill -9 at {killedAfter.TotalSeconds:F2} s; writer {summary.Sent} sent, {summary.Acked} acked, "
                    + $"{summary.Durable} durable, {summary.Flushes} flushes; verify durable: {durable.Checked} checked, {durable.Lost} lost, "
                    + $"{durable.Corrupt} corrupt; acked: {acked.Lost} lost, {acked.Corrupt} corrupt");
            }

            await daemon.StopAsync();
        }
        finally
        {
            await daemon.DisposeAsync();
        }
    }

    [Fact]
    public async Task Verify_OneStampedBlockCorruptedInTheImage_ReportsExactlyOneCorrupt()
    {
        await EnsureLibnbdAsync();
        using var dir = new TempDirectory();
        var state = dir.PathOf("ack.state");
        var image = await WriteCleanStampedVolumeAsync(dir, state);

        var (block, _, _) = FindStamp(image, minVersion: 1);
        await using (var file = new FileStream(image, FileMode.Open, FileAccess.ReadWrite))
        {
            var offset = ((long)block * BlockSize) + 1000; // inside the payload
            file.Position = offset;
            var original = file.ReadByte();
            file.Position = offset;
            file.WriteByte((byte)(original ^ 0x40));
        }

        await using var daemon = await DaemonProcess.StartAsync(dir, size: "64M");
        var result = await VerifyAsync(daemon, state, "durable");
        output.WriteLine($"after corrupting block {block}: {result}");
        Assert.True(result.ExitCode == 1 && result.Corrupt == 1 && result.Lost == 0, $"one corrupted block: {result}");
        Assert.Contains($"block {block} corrupt: checksum mismatch", result.Stderr, StringComparison.Ordinal);
        await daemon.StopAsync();
    }

    [Fact]
    public async Task Verify_OneBlockRolledBackToAnOlderVersion_ReportsExactlyOneLostWrite()
    {
        await EnsureLibnbdAsync();
        Assert.True(Shake128.IsSupported, "SHAKE-128 is not available from the platform's OpenSSL");
        using var dir = new TempDirectory();
        var state = dir.PathOf("ack.state");
        var image = await WriteCleanStampedVolumeAsync(dir, state);

        var (block, version, runId) = FindStamp(image, minVersion: 2);
        await using (var file = new FileStream(image, FileMode.Open, FileAccess.ReadWrite))
        {
            file.Position = (long)block * BlockSize;
            file.Write(Stamp(block, version - 1, runId));
        }

        await using var daemon = await DaemonProcess.StartAsync(dir, size: "64M");
        var result = await VerifyAsync(daemon, state, "durable");
        output.WriteLine($"after rolling block {block} back from version {version} to {version - 1}: {result}");
        Assert.True(result.ExitCode == 1 && result.Lost == 1 && result.Corrupt == 0, $"one block rolled back: {result}");
        Assert.Contains($"block {block} lost: holds version {version - 1}, durable version is {version}", result.Stderr, StringComparison.Ordinal);

        // Prefix mode (async replication) reports the missing write but does not fail on it.
        var prefix = await VerifyAsync(daemon, state, "prefix");
        output.WriteLine($"prefix mode: {prefix}");
        Assert.True(prefix.ExitCode == 0 && prefix.Lost == 1 && prefix.Corrupt == 0, $"prefix mode: {prefix}");
        await daemon.StopAsync();
    }

    /// <summary>
    /// 2000 writes over 64 blocks (about 31 versions each) that end normally with a final flush, a clean verify,
    /// then SIGTERM; returns the image path with the daemon stopped.
    /// </summary>
    private static async Task<string> WriteCleanStampedVolumeAsync(TempDirectory dir, string state)
    {
        await using var daemon = await DaemonProcess.StartAsync(dir, size: "64M");
        var write = (await Tool.RunAsync(Script,
        [
            "write", "--uri", daemon.NbdUri, "--state", state, "--blocks", "64", "--writes", "2000",
            "--flush-every", "50", "--fua-ratio", "0.1", "--seed", "5",
        ], Tool.DefaultTimeout)).EnsureSuccess();
        var summary = ParseWriterSummary(write.Stdout.Split('\n'), write.ToString());
        Assert.True(summary is { Sent: 2000, Acked: 2000, Durable: 2000, Ended: "done" }, $"writer: {summary}\n{write}");

        var baseline = await VerifyAsync(daemon, state, "durable");
        Assert.True(baseline.ExitCode == 0 && baseline.Checked == 64 && baseline.Lost == 0 && baseline.Corrupt == 0,
            $"baseline before tampering: {baseline}");
        await daemon.StopAsync();
        return daemon.ImagePath;
    }

    /// <summary>The first block of the image whose stamp has at least <paramref name="minVersion"/>.</summary>
    private static (int Block, ulong Version, byte[] RunId) FindStamp(string image, ulong minVersion)
    {
        var magic = "ACKCHK01"u8.ToArray();
        for (var block = 0; block < 64; block++)
        {
            var header = TestData.ReadFileRange(image, (long)block * BlockSize, 36);
            if (header.AsSpan(0, 8).SequenceEqual(magic)
                && BinaryPrimitives.ReadUInt64LittleEndian(header.AsSpan(8)) == (ulong)block
                && BinaryPrimitives.ReadUInt64LittleEndian(header.AsSpan(16)) is var version && version >= minVersion)
            {
                return (block, version, header.AsSpan(24, 8).ToArray());
            }
        }

        Assert.Fail($"no stamp with version >= {minVersion} in the first 64 blocks of {image}");
        return default;
    }

    /// <summary>The stamp layout documented in tools/ackcheck.py, built independently of the script.</summary>
    private static byte[] Stamp(int block, ulong version, byte[] runId)
    {
        var stamp = new byte[BlockSize];
        "ACKCHK01"u8.CopyTo(stamp);
        BinaryPrimitives.WriteUInt64LittleEndian(stamp.AsSpan(8), (ulong)block);
        BinaryPrimitives.WriteUInt64LittleEndian(stamp.AsSpan(16), version);
        runId.CopyTo(stamp.AsSpan(24));
        BinaryPrimitives.WriteUInt32LittleEndian(stamp.AsSpan(32), BlockSize);
        var seed = new byte[24];
        "ackcheck"u8.CopyTo(seed);
        BinaryPrimitives.WriteUInt64LittleEndian(seed.AsSpan(8), (ulong)block);
        BinaryPrimitives.WriteUInt64LittleEndian(seed.AsSpan(16), version);
        Shake128.HashData(seed, stamp.AsSpan(36, BlockSize - 36 - 16));
        SHA256.HashData(stamp.AsSpan(0, BlockSize - 16)).AsSpan(0, 16).CopyTo(stamp.AsSpan(BlockSize - 16));
        return stamp;
    }

    private static async Task EnsureLibnbdAsync() =>
        (await NbdPython.RunAsync("import nbd")).EnsureSuccess();

    private static async Task<VerifyResult> VerifyAsync(DaemonProcess daemon, string state, string mode)
    {
        var run = await Tool.RunAsync(Script, ["verify", "--uri", daemon.NbdUri, "--state", state, "--mode", mode], Tool.DefaultTimeout);
        var lines = run.Stdout.Split('\n', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries);
        Assert.True(lines.Length == 1, $"verify should print exactly one stdout line.\n{run}");
        var m = ResultLine().Match(lines[0]);
        Assert.True(m.Success, $"malformed verify result line '{lines[0]}'.\n{run}");
        var info = StateLine().Match(run.Stderr);
        Assert.True(info.Success, $"verify printed no state summary.\n{run}");
        return new VerifyResult(run.ExitCode, Int(m, "checked"), Int(m, "lost"), Int(m, "corrupt"),
            Int(info, "runs"), Int(info, "sent"), run.Stderr);
    }

    private static WriterSummary ParseWriterSummary(IEnumerable<string> stdoutLines, string output)
    {
        foreach (var line in stdoutLines)
        {
            var m = SummaryLine().Match(line.Trim());
            if (m.Success)
            {
                return new WriterSummary(Int(m, "sent"), Int(m, "acked"), Int(m, "durable"), Int(m, "flushes"), m.Groups["ended"].Value);
            }
        }

        Assert.Fail($"the writer printed no summary line.\n{output}");
        return null!;
    }

    private static long Int(Match m, string group) => long.Parse(m.Groups[group].Value, CultureInfo.InvariantCulture);

    [GeneratedRegex(@"^ackcheck: (?<checked>\d+) blocks checked, (?<lost>\d+) lost writes, (?<corrupt>\d+) corrupt$")]
    private static partial Regex ResultLine();

    [GeneratedRegex(@"ackcheck: state: (?<runs>\d+) runs, (?<sent>\d+) writes sent,")]
    private static partial Regex StateLine();

    [GeneratedRegex(@"^ackcheck: run [0-9a-f]{16}: (?<sent>\d+) writes sent, (?<acked>\d+) acknowledged, (?<durable>\d+) durable, (?<flushes>\d+) flushes, ended: (?<ended>.*)$")]
    private static partial Regex SummaryLine();

    private sealed record WriterSummary(long Sent, long Acked, long Durable, long Flushes, string Ended);

    private sealed record VerifyResult(int ExitCode, long Checked, long Lost, long Corrupt, long Runs, long TotalSent, string Stderr)
    {
        public override string ToString() =>
            $"exit {ExitCode}, {Checked} checked, {Lost} lost, {Corrupt} corrupt, {Runs} runs, {TotalSent} sent\nstderr:\n{Stderr}";
    }
}
