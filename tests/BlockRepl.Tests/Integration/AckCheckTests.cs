using System.Buffers.Binary;
using System.Globalization;
using System.Security.Cryptography;
using Xunit;
using Xunit.Abstractions;

namespace BlockRepl.Tests.Integration;

/// <summary>
/// tools/ackcheck.py, the acknowledged-write checker the replication milestone runs across failovers: here it
/// proves the standalone daemon's FLUSH/FUA durability across kill -9 cycles, and that it does fail when a block
/// is corrupted or rolled back behind the daemon's back.
/// </summary>
public sealed class AckCheckTests(ITestOutputHelper output)
{
    private const int BlockSize = 4096;

    [Fact]
    public async Task Write_Kill9AndRestartFiveTimes_VerifyDurableFindsNoLostOrCorruptWrite()
    {
        await AckCheck.EnsureLibnbdAsync();
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
                AckCheck.WriterSummary summary;
                TimeSpan killedAfter;
                await using (var writer = ChildProcess.Start(AckCheck.Script,
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
                    summary = AckCheck.ParseWriterSummary(writer.StdoutLines, writer.Describe());
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

                var durable = await AckCheck.VerifyAsync(daemon.NbdUri, state, "durable");
                Assert.True(durable.ExitCode == 0 && durable.Lost == 0 && durable.Corrupt == 0 && durable.Checked > 0,
                    $"cycle {cycle}: verify --mode durable after kill -9: {durable}");
                Assert.Equal(cycle, durable.Runs);
                // S lines are written before a batch is sent, so a batch cut short by the crash may add up to --depth more.
                Assert.True(durable.TotalSent >= previousSent + summary.Sent && durable.TotalSent <= previousSent + summary.Sent + 32,
                    $"cycle {cycle}: the state file should hold {previousSent} + {summary.Sent} (+ up to 32) sent writes: {durable}");
                previousSent = durable.TotalSent;

                // kill -9 of a process does not lose the page cache, so every acknowledged write is still there too.
                var acked = await AckCheck.VerifyAsync(daemon.NbdUri, state, "acked");
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
        await AckCheck.EnsureLibnbdAsync();
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
        var result = await AckCheck.VerifyAsync(daemon.NbdUri, state, "durable");
        output.WriteLine($"after corrupting block {block}: {result}");
        Assert.True(result.ExitCode == 1 && result.Corrupt == 1 && result.Lost == 0, $"one corrupted block: {result}");
        Assert.Contains($"block {block} corrupt: checksum mismatch", result.Stderr, StringComparison.Ordinal);
        await daemon.StopAsync();
    }

    [Fact]
    public async Task Verify_OneBlockRolledBackToAnOlderVersion_ReportsExactlyOneLostWrite()
    {
        await AckCheck.EnsureLibnbdAsync();
        Assert.True(Shake128.IsSupported, "SHAKE-128 is not available from the platform's OpenSSL");
        using var dir = new TempDirectory();
        var state = dir.PathOf("ack.state");
        var image = await WriteCleanStampedVolumeAsync(dir, state);

        // Roll back the block whose last write was acknowledged earliest: hundreds of writes were sent after
        // that acknowledgement, so the rolled-back image is not a write-ordered prefix either.
        var block = EarliestFinishedBlock(state);
        var (_, version, runId) = FindStamp(image, minVersion: 2, onlyBlock: block);
        await using (var file = new FileStream(image, FileMode.Open, FileAccess.ReadWrite))
        {
            file.Position = (long)block * BlockSize;
            file.Write(Stamp(block, version - 1, runId));
        }

        await using var daemon = await DaemonProcess.StartAsync(dir, size: "64M");
        var result = await AckCheck.VerifyAsync(daemon.NbdUri, state, "durable");
        output.WriteLine($"after rolling block {block} back from version {version} to {version - 1}: {result}");
        Assert.True(result.ExitCode == 1 && result.Lost == 1 && result.Corrupt == 0, $"one block rolled back: {result}");
        Assert.Contains($"block {block} lost: holds version {version - 1}, durable version is {version}", result.Stderr, StringComparison.Ordinal);

        // Prefix mode (async replication) tolerates a missing write, but not one missing while later writes (sent
        // after it was acknowledged) are present: a rolled-back block in the middle is not a write-ordered prefix.
        var prefix = await AckCheck.VerifyAsync(daemon.NbdUri, state, "prefix");
        output.WriteLine($"prefix mode: {prefix}");
        Assert.True(prefix.ExitCode == 1 && prefix.Lost == 1 && prefix.Corrupt == 0, $"prefix mode: {prefix}");
        Assert.Contains($"block {block} out of order: holds version {version - 1}, but version {version} was acknowledged before", prefix.Stderr, StringComparison.Ordinal);
        await daemon.StopAsync();
    }

    /// <summary>
    /// 2000 writes over 64 blocks (about 31 versions each) that end normally with a final flush, a clean verify,
    /// then SIGTERM; returns the image path with the daemon stopped.
    /// </summary>
    private static async Task<string> WriteCleanStampedVolumeAsync(TempDirectory dir, string state)
    {
        await using var daemon = await DaemonProcess.StartAsync(dir, size: "64M");
        var write = (await Tool.RunAsync(AckCheck.Script,
        [
            "write", "--uri", daemon.NbdUri, "--state", state, "--blocks", "64", "--writes", "2000",
            "--flush-every", "50", "--fua-ratio", "0.1", "--seed", "5",
        ], Tool.DefaultTimeout)).EnsureSuccess();
        var summary = AckCheck.ParseWriterSummary(write.Stdout.Split('\n'), write.ToString());
        Assert.True(summary is { Sent: 2000, Acked: 2000, Durable: 2000, Ended: "done" }, $"writer: {summary}\n{write}");

        var baseline = await AckCheck.VerifyAsync(daemon.NbdUri, state, "durable");
        Assert.True(baseline.ExitCode == 0 && baseline.Checked == 64 && baseline.Lost == 0 && baseline.Corrupt == 0,
            $"baseline before tampering: {baseline}");
        var prefix = await AckCheck.VerifyAsync(daemon.NbdUri, state, "prefix");
        Assert.True(prefix.ExitCode == 0 && prefix.Stderr.Contains("0 blocks break the write order", StringComparison.Ordinal),
            $"prefix baseline before tampering: {prefix}");
        await daemon.StopAsync();
        return daemon.ImagePath;
    }

    /// <summary>The first block of the image whose stamp has at least <paramref name="minVersion"/>.</summary>
    private static (int Block, ulong Version, byte[] RunId) FindStamp(string image, ulong minVersion, int? onlyBlock = null)
    {
        var magic = "ACKCHK01"u8.ToArray();
        for (var block = onlyBlock ?? 0; block < (onlyBlock + 1 ?? 64); block++)
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

    /// <summary>From the state file: the block (with at least 2 versions) whose last acknowledgement came first.</summary>
    private static int EarliestFinishedBlock(string state)
    {
        var lastAck = new Dictionary<int, (int Line, ulong Version)>();
        var lines = File.ReadAllLines(state);
        for (var i = 0; i < lines.Length; i++)
        {
            var f = lines[i].Split(' ');
            if (f[0] is "A" or "D")
            {
                lastAck[int.Parse(f[1], CultureInfo.InvariantCulture)] = (i, ulong.Parse(f[2], CultureInfo.InvariantCulture));
            }
        }

        return lastAck.Where(e => e.Value.Version >= 2).MinBy(e => e.Value.Line).Key;
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
}
