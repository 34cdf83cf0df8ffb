using System.Globalization;
using System.Text.RegularExpressions;
using BlockRepl.Tests.Replication.Pair;
using Xunit;
using Xunit.Abstractions;

namespace BlockRepl.Tests.Integration;

/// <summary>
/// The daemon's iSCSI front end driven by the initiators a user has: libiscsi's conformance suite
/// (iscsi-test-cu), its small tools, and qemu's iscsi:// block driver, against NBD on the same volume.
/// </summary>
public sealed partial class IscsiClientTests(ITestOutputHelper output)
{
    private const string Iqn = "iqn.2026-11.io.blockrepl:vol";

    /// <summary>
    /// Tests iscsi-test-cu 1.19 reports as SKIPPED against blockrepl, each for a reason that is a choice, not a
    /// defect. A test that starts skipping (a command answering "not supported") fails the suite test below.
    /// </summary>
    private static readonly HashSet<string> ExpectedSkips = new(StringComparer.Ordinal)
    {
        // EXTENDED COPY / RECEIVE COPY RESULTS (XCOPY) are not implemented.
        "ExtendedCopy.DescrLimits", "ExtendedCopy.DescrType", "ExtendedCopy.ParamHdr", "ExtendedCopy.Simple",
        "ExtendedCopy.ValidSegDescr", "ExtendedCopy.ValidTgtDescr", "ReceiveCopyResults.CopyStatus", "ReceiveCopyResults.OpParams",
        // WRITE ATOMIC(16) is not implemented: its power-fail atomicity is more than a write to a file promises.
        "WriteAtomic16.BeyondEol", "WriteAtomic16.DpoFua", "WriteAtomic16.Simple", "WriteAtomic16.VPD",
        "WriteAtomic16.WriteProtect", "WriteAtomic16.ZeroBlocks",
        // The medium is not removable (RMB=0): the suite skips PREVENT ALLOW and START STOP's eject tests.
        "PreventAllow.2ITNexuses", "PreventAllow.ColdReset", "PreventAllow.Eject", "PreventAllow.ITNexusLoss",
        "PreventAllow.LUNReset", "PreventAllow.Logout", "PreventAllow.Simple", "PreventAllow.WarmReset", "StartStopUnit.Simple",
        // A primary is writable; the read-only suite runs against a secondary in its own test.
        "ReadOnly.ReadOnlySBC",
        // The suite treats an ILLEGAL REQUEST for reporting option 2 on a command without service actions as "not implemented".
        "ReportSupportedOpcodes.OneCommand",
        // SANITIZE needs --allow-sanitize and is not implemented.
        "Sanitize.BlockErase", "Sanitize.BlockEraseReserved", "Sanitize.CryptoErase", "Sanitize.CryptoEraseReserved",
        "Sanitize.ExitFailureMode", "Sanitize.InvalidServiceAction", "Sanitize.Overwrite", "Sanitize.OverwriteReserved",
        "Sanitize.Readonly", "Sanitize.Reservations", "Sanitize.Reset",
        // One logical block per physical block (exact GET LBA STATUS): the unaligned-unmap tests need LBPPB >= 2.
        "CompareAndWrite.InvalidDataOutSize", "WriteSame10.InvalidDataOutSize", "WriteSame10.UnmapUnaligned",
        "WriteSame16.InvalidDataOutSize", "WriteSame16.UnmapUnaligned",
    };

    private static string Url(DaemonProcess daemon, string? credentials = null, string query = "") =>
        $"iscsi://{(credentials is null ? "" : credentials + "@")}{daemon.IscsiAddress}/{Iqn}/0{query}";

    private static Task<DaemonProcess> StartAsync(TempDirectory dir, string size = "128M", params string[] extra) =>
        DaemonProcess.StartAsync(dir, size: size, extra: ["--iscsi", "127.0.0.1:0", .. extra]);

    [Fact]
    public async Task IscsiTestCu_AllTests_NoFailureAndOnlyExpectedSkips()
    {
        using var dir = new TempDirectory();
        await using var daemon = await StartAsync(dir);
        Assert.Matches(@"^127\.0\.0\.1:[1-9][0-9]*$", daemon.IscsiAddress ?? "");

        // Two initiator names (-i/-I) for the reservation tests; the URL twice gives the multipath tests two sessions.
        var url = Url(daemon);
        var result = await Tool.RunAsync("iscsi-test-cu",
            ["--dataloss", "-i", "iqn.2026-11.test:initiator1", "-I", "iqn.2026-11.test:initiator2", "-t", "ALL", url, url],
            TimeSpan.FromMinutes(5));
        var summary = SuiteSummary(result);
        var skipped = SkippedTests(result.Stdout);
        output.WriteLine($"iscsi-test-cu -t ALL: {summary.Total} tests, {summary.Passed} passed ({skipped.Count} of them skipped), {summary.Failed} failed");
        output.WriteLine("skipped: " + string.Join(", ", skipped.Order(StringComparer.Ordinal)));
        Assert.True(summary.Failed == 0 && result.ExitCode == 0, $"iscsi-test-cu reported {summary.Failed} failures:\n{string.Join('\n', FailedTests(result.Stdout))}\n{Tail(result.Stdout)}");
        Assert.True(summary.Total >= 230, $"the suite ran only {summary.Total} tests (libiscsi-bin 1.19 has 230)");
        Assert.Equal(summary.Total, summary.Ran);
        Assert.Equal(summary.Total, summary.Passed);
        var unexpected = skipped.Except(ExpectedSkips).ToList();
        Assert.True(unexpected.Count == 0, "tests newly skipped (a command answered 'not supported'): " + string.Join(", ", unexpected));
        await daemon.StopAsync();
    }

    [Fact]
    public async Task Secondary_IscsiTestCuReadOnlySuite_PassesWithWriteProtection()
    {
        await using var pair = await ReplicaPair.StartAsync("sync", "64M", extra: ["--iscsi", "127.0.0.1:0"]);
        var secondary = pair.B!;
        var result = await Tool.RunAsync("iscsi-test-cu", ["--dataloss", "-t", "ALL.ReadOnly", Url(secondary)], TimeSpan.FromMinutes(2));
        var summary = SuiteSummary(result);
        Assert.True(summary.Failed == 0 && result.ExitCode == 0, Tail(result.Stdout));
        Assert.True(summary.Ran >= 1, Tail(result.Stdout));
        Assert.Empty(SkippedTests(result.Stdout)); // the suite saw WP set and ran every write-protect check
    }

    [Fact]
    public async Task SyncPair_QemuIoWritesOverIscsi_ReplicatedByteForByte()
    {
        Tool.Require("qemu-io");
        Tool.Require(Tool.QemuIscsiDriver);
        await using var pair = await ReplicaPair.StartAsync("sync", "64M", extra: ["--iscsi", "127.0.0.1:0"]);
        var random = new Random(5);
        List<string> commands = [];
        for (var i = 0; i < 100; i++)
        {
            var offset = random.NextInt64(0, 63L * TestData.MiB) / 512 * 512;
            commands.Add(random.Next(8) == 0 ? $"discard {offset / 4096 * 4096} 65536" : $"write -P {random.Next(1, 256)} {offset} {random.Next(1, 300) * 512}");
        }

        commands.Add("flush");
        (await Tool.RunAsync("qemu-io", ["-f", "raw", Url(pair.A!), .. commands.SelectMany(c => new[] { "-c", c })], Tool.DefaultTimeout)).EnsureSuccess();
        await ReplicaPair.WaitInSyncAsync(pair.A!);

        // The secondary's iSCSI LUN is write-protected: qemu's write fails there.
        var refused = await Tool.RunAsync("qemu-io", ["-f", "raw", "-c", "write -P 1 0 4096", Url(pair.B!)], Tool.DefaultTimeout);
        Assert.True(refused.ExitCode != 0 || refused.Stdout.Contains("failed", StringComparison.Ordinal) || refused.Stderr.Length > 0,
            $"a write to the secondary's LUN was not refused.\n{refused}");
        Assert.DoesNotContain("wrote 4096/4096", refused.Stdout, StringComparison.Ordinal);

        var (hashA, hashB) = await pair.StopAndHashAsync();
        Assert.True(hashA == hashB, $"primary {hashA} and secondary {hashB} images differ");
        var zeroes = Convert.ToHexStringLower(System.Security.Cryptography.SHA256.HashData(new byte[64 * TestData.MiB]));
        Assert.NotEqual(zeroes, hashA);
    }

    [Fact]
    public async Task IscsiTools_LsInqReadCapacity16_DescribeTheVolume()
    {
        using var dir = new TempDirectory();
        await using var daemon = await StartAsync(dir, "96M");

        var ls = (await Tool.RunAsync("iscsi-ls", "-s", $"iscsi://{daemon.IscsiAddress}")).EnsureSuccess();
        Assert.Contains($"Target:{Iqn} Portal:{daemon.IscsiAddress},1", ls.Stdout, StringComparison.Ordinal);
        Assert.Contains("Lun:0", ls.Stdout, StringComparison.Ordinal);
        Assert.Contains("DIRECT_ACCESS", ls.Stdout, StringComparison.Ordinal);

        var inq = (await Tool.RunAsync("iscsi-inq", Url(daemon))).EnsureSuccess();
        Assert.Contains("Vendor:BLOCKREP", inq.Stdout, StringComparison.Ordinal);
        Assert.Contains("Peripheral Device Type:DIRECT_ACCESS", inq.Stdout, StringComparison.Ordinal);
        // The unit serial number (VPD 0x80) is the volume UUID, so it stays the same on the peer after a failover.
        var serial = (await Tool.RunAsync("iscsi-inq", "-e", "1", "-c", "128", Url(daemon))).EnsureSuccess();
        var status = await daemon.StatusJsonAsync();
        output.WriteLine(status.ToString());
        var uuid = Guid.Parse(status.GetProperty("volumes")[0].GetProperty("volumeUuid").GetString()!);
        Assert.Contains($"Unit Serial Number:[{uuid:N}]", serial.Stdout, StringComparison.Ordinal);

        var capacity = (await Tool.RunAsync("iscsi-readcapacity16", Url(daemon))).EnsureSuccess();
        Assert.Contains($"RETURNED LOGICAL BLOCK ADDRESS:{(96L * TestData.MiB / 512) - 1}", capacity.Stdout, StringComparison.Ordinal);
        Assert.Contains("LOGICAL BLOCK LENGTH IN BYTES:512", capacity.Stdout, StringComparison.Ordinal);
        Assert.Contains("LBPME:1 LBPRZ:1", capacity.Stdout, StringComparison.Ordinal);
        Assert.Contains($"Total size:{96L * TestData.MiB}", capacity.Stdout, StringComparison.Ordinal);
        await daemon.StopAsync();
    }

    [Fact]
    public async Task QemuIo_NbdAndIscsiOnOneVolume_EachReadsWhatTheOtherWrote()
    {
        Tool.Require("qemu-io");
        Tool.Require(Tool.QemuIscsiDriver);
        using var dir = new TempDirectory();
        await using var daemon = await StartAsync(dir, "64M");
        var iscsi = Url(daemon);

        // NBD writes, iSCSI reads (and the other way round), at unaligned offsets and across request boundaries.
        (byte Pattern, long Offset, int Length)[] viaNbd = [(0x5c, 1048576, 3 * TestData.MiB), (0x21, 4095, 70001), (0x7e, 40L * TestData.MiB - 512, 4096)];
        (byte Pattern, long Offset, int Length)[] viaIscsi = [(0x3a, 7340032, 1000448), (0x4b, 300001, 9000), (0x11, 63L * TestData.MiB, TestData.MiB)];
        await QemuIoAsync(daemon.NbdUri, viaNbd.Select(w => $"write -P 0x{w.Pattern:x2} {w.Offset} {w.Length}").Append("flush"));
        await QemuIoAsync(iscsi, viaIscsi.Select(w => $"write -P 0x{w.Pattern:x2} {w.Offset} {w.Length}").Append("flush"));
        await QemuIoAsync(iscsi, viaNbd.Select(w => $"read -P 0x{w.Pattern:x2} {w.Offset} {w.Length}"));
        await QemuIoAsync(daemon.NbdUri, viaIscsi.Select(w => $"read -P 0x{w.Pattern:x2} {w.Offset} {w.Length}"));

        // The whole disk read through each front end equals the image file.
        var fromIscsi = dir.PathOf("from-iscsi.raw");
        var fromNbd = dir.PathOf("from-nbd.raw");
        (await Tool.RunAsync("qemu-img", ["convert", "-f", "raw", "-O", "raw", iscsi, fromIscsi], Tool.DefaultTimeout)).EnsureSuccess();
        (await Tool.RunAsync("qemu-img", ["convert", "-f", "raw", "-O", "raw", daemon.NbdUri, fromNbd], Tool.DefaultTimeout)).EnsureSuccess();
        var image = await TestData.Sha256OfFileAsync(daemon.ImagePath);
        Assert.Equal(image, await TestData.Sha256OfFileAsync(fromIscsi));
        Assert.Equal(image, await TestData.Sha256OfFileAsync(fromNbd));
        var bytes = TestData.ReadFileRange(daemon.ImagePath, 300001, 9000);
        Assert.All(bytes, b => Assert.Equal(0x4b, b));
        await daemon.StopAsync();
    }

    [Fact]
    public async Task Chap_WrongOrMissingSecretRefused_MutualChapAndHeaderDigestWork()
    {
        Tool.Require(Tool.QemuIscsiDriver);
        using var dir = new TempDirectory();
        await using var daemon = await StartAsync(dir, "64M", "--iscsi-chap", "alice:alice-secret-12", "--iscsi-mutual-chap", "target1:target-secret-34");

        var none = await Tool.RunAsync("iscsi-inq", Url(daemon));
        Assert.True(none.ExitCode != 0 && none.Stdout.Contains("Authentication failure", StringComparison.Ordinal) | none.Stderr.Contains("Authentication failure", StringComparison.Ordinal), none.ToString());
        var wrong = await Tool.RunAsync("iscsi-inq", Url(daemon, "alice%not-the-secret"));
        Assert.NotEqual(0, wrong.ExitCode);
        Assert.DoesNotContain("Vendor:", wrong.Stdout, StringComparison.Ordinal);

        var right = (await Tool.RunAsync("iscsi-inq", Url(daemon, "alice%alice-secret-12"))).EnsureSuccess();
        Assert.Contains("Vendor:BLOCKREP", right.Stdout, StringComparison.Ordinal);

        // Mutual CHAP: the initiator checks the target's answer; a wrong expected target secret fails the login.
        var mutual = (await Tool.RunAsync("iscsi-inq", Url(daemon, "alice%alice-secret-12", "?target_user=target1&target_password=target-secret-34"))).EnsureSuccess();
        Assert.Contains("Vendor:BLOCKREP", mutual.Stdout, StringComparison.Ordinal);
        var impostor = await Tool.RunAsync("iscsi-inq", Url(daemon, "alice%alice-secret-12", "?target_user=target1&target_password=some-other-secret"));
        Assert.NotEqual(0, impostor.ExitCode);

        // qemu with CHAP and CRC32C header digests: a write and its read-back.
        var opts = $"driver=iscsi,transport=tcp,portal={daemon.IscsiAddress},target={Iqn},lun=0,header-digest=crc32c,user=alice,password-secret=s0";
        var io = (await Tool.RunAsync("qemu-io", ["--object", "secret,id=s0,data=alice-secret-12", "--image-opts", opts,
            "-c", "write -P 0x6d 65536 131072", "-c", "read -P 0x6d 65536 131072"], Tool.DefaultTimeout)).EnsureSuccess();
        Assert.Contains("read 131072/131072 bytes at offset 65536", io.Stdout, StringComparison.Ordinal);
        Assert.DoesNotContain("Pattern verification failed", io.Stdout, StringComparison.Ordinal);
        await daemon.StopAsync();
        Assert.Contains("auth mutual CHAP", daemon.Stderr, StringComparison.Ordinal);
        Assert.Contains("digests header CRC32C", daemon.Stderr, StringComparison.Ordinal);
        Assert.Contains("CHAP authentication of user 'alice' failed", daemon.Stderr, StringComparison.Ordinal);
    }

    [Fact]
    public async Task ConfigFile_IscsiKeys_CustomTargetNameWithChap()
    {
        using var dir = new TempDirectory();
        var config = dir.PathOf("blockrepl.json");
        // Only the iSCSI keys: every key left out keeps its default.
        await File.WriteAllTextAsync(config, """
            {
              "iscsi": "127.0.0.1:0", "iscsiIqn": "iqn.2026-11.com.example:disk1", "iscsiChap": "bob:bob-secret-1234"
            }
            """);
        await using var daemon = await DaemonProcess.StartAsync(dir, size: "16M", extra: ["--config", config]);
        Assert.NotNull(daemon.IscsiAddress);
        var ls = (await Tool.RunAsync("iscsi-ls", "-s", $"iscsi://bob%bob-secret-1234@{daemon.IscsiAddress}")).EnsureSuccess();
        Assert.Contains("Target:iqn.2026-11.com.example:disk1 ", ls.Stdout, StringComparison.Ordinal);
        Assert.DoesNotContain(Iqn, ls.Stdout, StringComparison.Ordinal);
        var refused = await Tool.RunAsync("iscsi-inq", $"iscsi://{daemon.IscsiAddress}/iqn.2026-11.com.example:disk1/0");
        Assert.NotEqual(0, refused.ExitCode);
        await daemon.StopAsync();
    }

    [Theory]
    [InlineData("--iscsi-chap", "alice:short", "--iscsi-chap: a CHAP secret must be 12 to 255 characters long")]
    [InlineData("--iscsi-iqn", "iqn.2026-11.Bad_Name", "is not a valid iSCSI name")]
    [InlineData("--iscsi-mutual-chap", "t:target-secret-34", "--iscsi-mutual-chap needs --iscsi-chap")]
    public async Task BadIscsiFlags_RefusedWithOneLine(string flag, string value, string message)
    {
        using var dir = new TempDirectory();
        var result = await Tool.RunAsync(RepoLayout.DaemonBinary,
            DaemonProcess.ServeArgs(dir, "16M", "vol", null, null, ["--iscsi", "127.0.0.1:0", flag, value]), Tool.DefaultTimeout);
        Assert.Equal(1, result.ExitCode);
        Assert.Contains(message, result.Stderr, StringComparison.Ordinal);
        Assert.Single(result.Stderr.Trim().Split('\n'));
    }

    private static async Task QemuIoAsync(string url, IEnumerable<string> commands)
    {
        var list = commands.ToList();
        var result = (await Tool.RunAsync("qemu-io", ["-f", "raw", .. list.SelectMany(c => new[] { "-c", c }), url], Tool.DefaultTimeout)).EnsureSuccess();
        Assert.DoesNotContain("Pattern verification failed", result.Stdout, StringComparison.Ordinal);
        foreach (var read in list.Where(c => c.StartsWith("read", StringComparison.Ordinal)))
        {
            var parts = read.Split(' ');
            Assert.Contains($"read {parts[^1]}/{parts[^1]} bytes at offset {parts[^2]}", result.Stdout, StringComparison.Ordinal);
        }
    }

    private sealed record Summary(int Total, int Ran, int Passed, int Failed);

    private static Summary SuiteSummary(ToolResult result)
    {
        var m = TestsLine().Match(result.Stdout);
        Assert.True(m.Success, $"no 'Run Summary' tests line in iscsi-test-cu's output.\n{result}");
        int At(int i) => int.Parse(m.Groups[i].Value, CultureInfo.InvariantCulture);
        return new Summary(At(1), At(2), At(3), At(4));
    }

    /// <summary>Suite.Test names that printed [SKIPPED] (a test can print it more than once).</summary>
    private static HashSet<string> SkippedTests(string stdout) => TestsWith(stdout, line => line.Contains("[SKIPPED]", StringComparison.Ordinal));

    private static HashSet<string> FailedTests(string stdout) =>
        TestsWith(stdout, line => line.EndsWith("FAILED", StringComparison.Ordinal) && !line.Contains("[FAILED]", StringComparison.Ordinal));

    private static HashSet<string> TestsWith(string stdout, Func<string, bool> predicate)
    {
        var found = new HashSet<string>(StringComparer.Ordinal);
        string suite = "", test = "";
        foreach (var line in stdout.Split('\n'))
        {
            var s = SuiteLine().Match(line);
            if (s.Success)
            {
                suite = s.Groups[1].Value;
            }

            var t = TestLine().Match(line);
            if (t.Success)
            {
                test = t.Groups[1].Value;
            }

            if (predicate(line.TrimEnd()) && test.Length > 0)
            {
                found.Add($"{suite}.{test}");
            }
        }

        return found;
    }

    private static string Tail(string text) => string.Join('\n', text.Split('\n').TakeLast(60));

    [GeneratedRegex(@"^\s*tests\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)\s+\d+", RegexOptions.Multiline)]
    private static partial Regex TestsLine();

    [GeneratedRegex(@"^Suite: (\S+)")]
    private static partial Regex SuiteLine();

    [GeneratedRegex(@"^\s+Test: (\S+) \.\.\.")]
    private static partial Regex TestLine();
}
