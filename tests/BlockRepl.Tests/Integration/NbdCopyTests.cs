using Xunit;

namespace BlockRepl.Tests.Integration;

/// <summary>nbdcopy (libnbd): 4 connections (with CAN_MULTI_CONN), 64 requests in flight, 256 KiB requests.</summary>
public sealed class NbdCopyTests
{
    [Fact]
    public async Task NbdCopy_Random256MiBIntoExportAndBack_Sha256Equal()
    {
        const long size = 256L * TestData.MiB;
        using var dir = new TempDirectory();
        await using var daemon = await DaemonProcess.StartAsync(dir, size: "256M");

        // A 16 MiB hole in the source makes nbdcopy send zero requests; 0xff is written there first so a
        // zero request that does nothing is caught.
        var source = dir.PathOf("source.raw");
        await TestData.WriteRandomFileAsync(source, size, seed: 4, holes: (64L * TestData.MiB, 16L * TestData.MiB));
        (await Tool.RunAsync("qemu-io", "-f", "raw", "-c", $"write -P 0xff {63 * TestData.MiB} {18 * TestData.MiB}", daemon.NbdUri))
            .EnsureSuccess();

        (await Tool.RunAsync("nbdcopy", "--flush", source, daemon.NbdUri)).EnsureSuccess();
        var output = dir.PathOf("output.raw");
        (await Tool.RunAsync("nbdcopy", daemon.NbdUri, output)).EnsureSuccess();

        var expected = await TestData.Sha256OfFileAsync(source);
        Assert.Equal(size, new FileInfo(output).Length);
        Assert.Equal(expected, await TestData.Sha256OfFileAsync(output));
        Assert.Equal(expected, await TestData.Sha256OfFileAsync(daemon.ImagePath));

        await daemon.StopAsync();
    }
}
