using Xunit;

namespace BlockRepl.Tests.Integration;

/// <summary>Start, restart, crash and shutdown of `blockrepl serve`, checked through the image file on disk.</summary>
public sealed class DaemonLifecycleTests
{
    [Fact]
    public async Task Serve_FreshDataDir_CreatesSparseImageAndMetaAndPrintsOneReadyLine()
    {
        using var dir = new TempDirectory();
        await using var daemon = await DaemonProcess.StartAsync(dir, size: "1G");

        Assert.Equal(Path.Combine(daemon.DataDir, "vol.img"), daemon.ImagePath);
        Assert.Equal(1L << 30, new FileInfo(daemon.ImagePath).Length);
        Assert.True(File.Exists(Path.Combine(daemon.DataDir, "vol.meta")), "vol.meta was not created");
        var stat = (await Tool.RunAsync("stat", "-c", "%b %B", daemon.ImagePath)).EnsureSuccess();
        var parts = stat.Stdout.Split(' ', StringSplitOptions.TrimEntries);
        var allocated = long.Parse(parts[0], System.Globalization.CultureInfo.InvariantCulture)
            * long.Parse(parts[1], System.Globalization.CultureInfo.InvariantCulture);
        Assert.True(allocated < TestData.MiB, $"a fresh 1 GiB image has {allocated} bytes allocated; it should be sparse");

        await daemon.StopAsync();
        Assert.True(daemon.StdoutLines.Count == 1, $"expected only the ready line on stdout, got:\n{string.Join('\n', daemon.StdoutLines)}");
    }

    [Fact]
    public async Task Serve_WatchesNoFiles_NoInotifyOnTheWorkingDirectory()
    {
        // The web host's defaults load appsettings.json from the current directory and watch it (recursively) for
        // changes; run from the data directory, every write to the image woke that watcher (about twice the CPU per
        // GiB of a 4 KiB random-write run). The daemon is configured by its options only and watches nothing.
        using var dir = new TempDirectory();
        await using var daemon = await DaemonProcess.StartAsync(dir, size: "64M");

        var watches = Directory.GetFileSystemEntries($"/proc/{daemon.Pid}/fd")
            .Select(fd => new FileInfo(fd).LinkTarget)
            .Where(target => target is not null && target.Contains("inotify", StringComparison.Ordinal))
            .ToList();
        Assert.True(watches.Count == 0, $"the daemon holds {watches.Count} inotify descriptor(s)");

        await daemon.StopAsync();
    }

    [Fact]
    public async Task Serve_NbdListOfUnixAndTcp_ServesTheVolumeOnBoth()
    {
        using var dir = new TempDirectory();
        var socket = dir.PathOf("nbd.sock");
        await using var daemon = await DaemonProcess.StartAsync(dir, nbd: $"unix:{socket},127.0.0.1:0");

        Assert.Equal($"nbd+unix:///vol?socket={socket}", daemon.NbdUri);
        var tcp = Assert.Single(daemon.MoreNbdUris);
        Assert.Matches("^nbd://127\\.0\\.0\\.1:[1-9][0-9]*/vol$", tcp);

        // A write through one listener is read back through the other, on connections open at the same time.
        var result = await NbdPython.RunJsonAsync(
            """
            import hashlib, json, random, sys, nbd
            a, b = nbd.NBD(), nbd.NBD()
            a.connect_uri(sys.argv[1])
            b.connect_uri(sys.argv[2])
            data = random.Random(11).randbytes(256 * 1024)
            a.pwrite(data, 3 << 20)
            a.flush()
            back = b.pread(len(data), 3 << 20)
            b.pwrite(data[::-1], 9 << 20)
            b.flush()
            print(json.dumps({"same": back == data, "reverse": a.pread(len(data), 9 << 20) == data[::-1]}))
            """,
            daemon.NbdUri,
            tcp);
        Assert.True(result.GetProperty("same").GetBoolean(), "a write over the unix socket was not read back over TCP");
        Assert.True(result.GetProperty("reverse").GetBoolean(), "a write over TCP was not read back over the unix socket");

        await daemon.StopAsync();
    }

    private const string DurableWriteScript =
        """
        import hashlib, json, random, sys, nbd
        h = nbd.NBD()
        h.connect_uri(sys.argv[1])
        rng = random.Random(7)
        flushed, fua = rng.randbytes(1 << 20), rng.randbytes(65536 + 3)
        h.pwrite(flushed, (5 << 20) + 123)
        h.flush()
        h.pwrite(fua, (40 << 20) + 1, nbd.CMD_FLAG_FUA)
        print(json.dumps({"flushed": hashlib.sha256(flushed).hexdigest(), "fua": hashlib.sha256(fua).hexdigest()}))
        """;

    private const string ReadBackScript =
        """
        import hashlib, json, sys, nbd
        h = nbd.NBD()
        h.connect_uri(sys.argv[1])
        print(json.dumps({
            "flushed": hashlib.sha256(h.pread(1 << 20, (5 << 20) + 123)).hexdigest(),
            "fua": hashlib.sha256(h.pread(65536 + 3, (40 << 20) + 1)).hexdigest()}))
        """;

    [Fact]
    public async Task Flush_ThenKill9AndRestart_DataSurvives()
    {
        using var dir = new TempDirectory();
        var written = default(System.Text.Json.JsonElement);
        await using (var daemon = await DaemonProcess.StartAsync(dir, size: "64M"))
        {
            // The script exits right after the FLUSH reply and the FUA write's reply; SIGKILL follows at once.
            written = await NbdPython.RunJsonAsync(DurableWriteScript, daemon.NbdUri);
            await daemon.Kill9Async();
        }

        await using var restarted = await DaemonProcess.StartAsync(dir, size: "64M");
        var readBack = await NbdPython.RunJsonAsync(ReadBackScript, restarted.NbdUri);

        Assert.Equal(written.GetProperty("flushed").GetString(), readBack.GetProperty("flushed").GetString());
        Assert.Equal(written.GetProperty("fua").GetString(), readBack.GetProperty("fua").GetString());
        Assert.Equal(written.GetProperty("flushed").GetString(), Sha256(TestData.ReadFileRange(restarted.ImagePath, (5 << 20) + 123, 1 << 20)));
        Assert.Equal(written.GetProperty("fua").GetString(), Sha256(TestData.ReadFileRange(restarted.ImagePath, (40 << 20) + 1, 65536 + 3)));

        await restarted.StopAsync();
    }

    [Fact]
    public async Task Serve_AfterKill9WithUnixSockets_RestartsOnTheSamePaths()
    {
        using var dir = new TempDirectory();
        var socket = dir.PathOf("nbd.sock");
        await using (var daemon = await DaemonProcess.StartAsync(dir, nbd: "unix:" + socket))
        {
            (await Tool.RunAsync("qemu-io", "-f", "raw", "-c", "write -P 0x2b 5000 3000", "-c", "flush", daemon.NbdUri)).EnsureSuccess();
            await daemon.Kill9Async();
        }

        // SIGKILL leaves both socket files behind; a restart must replace them, not fail with "address in use".
        Assert.True(File.Exists(socket), "expected the killed daemon's NBD socket file to remain");
        await using var restarted = await DaemonProcess.StartAsync(dir, nbd: "unix:" + socket);
        (await Tool.RunAsync("qemu-io", "-f", "raw", "-c", "read -P 0x2b 5000 3000", restarted.NbdUri)).EnsureSuccess();
        await restarted.StatusJsonAsync();

        await restarted.StopAsync();
    }

    [Theory]
    [InlineData(ChildProcess.SIGTERM)]
    [InlineData(ChildProcess.SIGINT)]
    public async Task Signal_WithClientConnected_ExitsZeroAndDataInImage(int signal)
    {
        using var dir = new TempDirectory();
        await using var daemon = await DaemonProcess.StartAsync(dir, size: "64M");
        await using var client = await NbdPython.StartAsync(
            """
            import sys, nbd
            h = nbd.NBD()
            h.connect_uri(sys.argv[1])
            h.pwrite(bytes([0x3d]) * 300000, 777777)
            print("written", flush=True)
            sys.stdin.readline()
            """,
            daemon.NbdUri);
        await client.WaitForLineAsync(l => l == "written", "client write");

        // No FLUSH from the client: the daemon's shutdown must make the write reach the image (fdatasync).
        await daemon.StopAsync(signal);

        var bytes = TestData.ReadFileRange(daemon.ImagePath, 777777, 300000);
        TestData.AssertBytesEqual(Enumerable.Repeat((byte)0x3d, 300000).ToArray(), bytes, "image after shutdown", 777777);
    }

    private const string InFlightScript =
        """
        import json, os, signal, sys, nbd
        h = nbd.NBD()
        h.connect_uri(sys.argv[1])
        n, count = 1 << 20, 48
        cookies = []
        for i in range(count):
            buf = nbd.Buffer.from_bytearray(bytearray([i + 1]) * n)
            cookies.append(h.aio_pwrite(buf, i * n, flags=nbd.CMD_FLAG_FUA))
        # Signal from here, right after queueing: the writes are certainly not all answered yet.
        os.kill(int(sys.argv[2]), signal.SIGTERM)
        try:
            while h.aio_in_flight() > 0:
                h.poll(-1)
        except nbd.Error:
            pass
        res = []
        for c in cookies:
            try:
                res.append("ok" if h.aio_command_completed(c) else "pending")
            except nbd.Error as e:
                res.append(e.errnum if e.errnum is not None else str(e))
        print(json.dumps({"writes": res}))
        """;

    /// <summary>
    /// SIGTERM (sent by the client itself) while 48 FUA writes are queued: however many the daemon answers
    /// before it exits, every write it acknowledged must be in the image, and a write it refuses must be refused
    /// with ESHUTDOWN (or cut off by the closing connection), never with another error.
    /// </summary>
    [Fact]
    public async Task Sigterm_WithWritesInFlight_AcknowledgedWritesAreInImage()
    {
        const int ESHUTDOWN = 108;
        const int ENOTCONN = 107; // libnbd's answer for a command the closed connection cut off (never replied to)
        using var dir = new TempDirectory();
        await using var daemon = await DaemonProcess.StartAsync(dir, size: "64M");
        await using var client = await NbdPython.StartAsync(
            InFlightScript, daemon.NbdUri, daemon.Pid.ToString(System.Globalization.CultureInfo.InvariantCulture));

        var exitCode = await daemon.WaitForExitAsync();
        Assert.True(exitCode == 0, $"daemon exited with code {exitCode} after SIGTERM\n{daemon.Stderr}");
        Assert.True(await client.WaitForExitAsync() == 0, $"client failed\n{client.Describe()}");
        using var json = System.Text.Json.JsonDocument.Parse(client.StdoutLines[^1]);
        var writes = json.RootElement.GetProperty("writes").EnumerateArray().ToList();
        Assert.Equal(48, writes.Count);
        for (var i = 0; i < writes.Count; i++)
        {
            if (writes[i].ValueKind == System.Text.Json.JsonValueKind.String && writes[i].GetString() == "ok")
            {
                var bytes = TestData.ReadFileRange(daemon.ImagePath, (long)i * TestData.MiB, TestData.MiB);
                TestData.AssertBytesEqual(Enumerable.Repeat((byte)(i + 1), TestData.MiB).ToArray(), bytes, $"acknowledged write {i} in the image", (long)i * TestData.MiB);
            }
            else if (writes[i].ValueKind == System.Text.Json.JsonValueKind.Number)
            {
                Assert.True(writes[i].GetInt32() is ESHUTDOWN or ENOTCONN,
                    $"write {i} failed with errno {writes[i]} during shutdown; expected ESHUTDOWN or a closed connection (ENOTCONN)\n{json.RootElement}");
            }
        }
    }

    [Theory]
    [InlineData("128M")]
    [InlineData("32M")]
    [InlineData("67109376")]
    public async Task Serve_ExistingImageWithDifferentSize_ExitsOneWithSingleLineReason(string size)
    {
        using var dir = new TempDirectory();
        string imagePath;
        await using (var daemon = await DaemonProcess.StartAsync(dir, size: "64M"))
        {
            imagePath = daemon.ImagePath;
            (await Tool.RunAsync("qemu-io", "-f", "raw", "-c", "write -P 0x42 0 65536", "-c", "flush", daemon.NbdUri)).EnsureSuccess();
            await daemon.StopAsync();
        }

        var result = await DaemonProcess.RunExpectingExitAsync(dir, size);

        Assert.True(result.ExitCode == 1, $"exit code {result.ExitCode}, expected 1\n{result}");
        var lines = result.Stderr.Split('\n', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries);
        Assert.True(lines.Length == 1, $"expected a one-line reason on stderr, got {lines.Length} lines:\n{result.Stderr}");
        Assert.DoesNotContain("   at ", result.Stderr, StringComparison.Ordinal);
        Assert.DoesNotContain("Unhandled exception", result.Stderr, StringComparison.OrdinalIgnoreCase);

        // The refused start left the image alone.
        Assert.Equal(64L * TestData.MiB, new FileInfo(imagePath).Length);
        TestData.AssertBytesEqual(Enumerable.Repeat((byte)0x42, 65536).ToArray(), TestData.ReadFileRange(imagePath, 0, 65536), "image after refused start");
    }

    private static string Sha256(byte[] data) => Convert.ToHexStringLower(System.Security.Cryptography.SHA256.HashData(data));
}
