using System.Text.Json;
using Xunit;

namespace BlockRepl.Tests.Integration;

/// <summary>qemu-img: what a user runs to inspect an export and to copy disk images in and out of it.</summary>
public sealed class QemuImgTests
{
    [Fact]
    public async Task QemuImg_Info_ReportsVirtualSize()
    {
        using var dir = new TempDirectory();
        await using var daemon = await DaemonProcess.StartAsync(dir, size: "64M");

        var info = (await Tool.RunAsync("qemu-img", "info", "--output=json", daemon.NbdUri)).EnsureSuccess();
        using var json = JsonDocument.Parse(info.Stdout);
        Assert.Equal(64L * TestData.MiB, json.RootElement.GetProperty("virtual-size").GetInt64());

        await daemon.StopAsync();
    }

    [Fact]
    public async Task QemuImg_ConvertRandomRawIntoExportAndBack_ContentsEqual()
    {
        using var dir = new TempDirectory();
        await using var daemon = await DaemonProcess.StartAsync(dir, size: "64M");

        // Random data with a 4 MiB hole, so that convert also sends zero requests to the export; the export is
        // pre-filled with 0xff there first, so that a zero request that does nothing is caught.
        var source = dir.PathOf("source.raw");
        await TestData.WriteRandomFileAsync(source, 64L * TestData.MiB, seed: 2, holes: (20L * TestData.MiB, 4L * TestData.MiB));
        (await Tool.RunAsync("qemu-io", "-f", "raw", "-c", $"write -P 0xff {19 * TestData.MiB} {6 * TestData.MiB}", daemon.NbdUri))
            .EnsureSuccess();

        (await Tool.RunAsync("qemu-img", "convert", "-n", "-f", "raw", "-O", "raw", source, daemon.NbdUri)).EnsureSuccess();
        var output = dir.PathOf("output.raw");
        (await Tool.RunAsync("qemu-img", "convert", "-f", "raw", "-O", "raw", daemon.NbdUri, output)).EnsureSuccess();

        var compare = await Tool.RunAsync("qemu-img", "compare", "-f", "raw", "-F", "raw", source, daemon.NbdUri);
        Assert.True(compare.ExitCode == 0, $"qemu-img compare source export: exit {compare.ExitCode}\n{compare}");
        Assert.Contains("Images are identical", compare.Stdout, StringComparison.Ordinal);

        var expected = await TestData.Sha256OfFileAsync(source);
        Assert.Equal(expected, await TestData.Sha256OfFileAsync(output));
        Assert.Equal(expected, await TestData.Sha256OfFileAsync(daemon.ImagePath));

        await daemon.StopAsync();
    }
}
