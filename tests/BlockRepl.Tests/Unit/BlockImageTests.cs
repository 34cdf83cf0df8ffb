using BlockRepl.Core;

namespace BlockRepl.Tests.Unit;

public sealed class BlockImageTests : IDisposable
{
    private readonly string _dir = Directory.CreateTempSubdirectory("blockrepl-image-").FullName;

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    [Fact]
    public void OpenOrCreate_NewImage_IsSparseAndReadsZero()
    {
        using var image = BlockImage.OpenOrCreate(Path.Combine(_dir, "a.img"), 8 << 20);
        var extents = new ImageExtent[4];
        Assert.Equal(1, image.GetExtents(0, 8 << 20, extents));
        Assert.Equal(new ImageExtent(0, 8 << 20, IsHole: true), extents[0]);
        var buffer = new byte[4096];
        buffer.AsSpan().Fill(0xff);
        image.Read(4 << 20, buffer);
        Assert.All(buffer, b => Assert.Equal(0, b));
    }

    [Fact]
    public void OpenOrCreate_ExistingImageOfOtherSize_IsRefused()
    {
        var path = Path.Combine(_dir, "b.img");
        BlockImage.OpenOrCreate(path, 1 << 20).Dispose();
        var error = Assert.Throws<InvalidOperationException>(() => BlockImage.OpenOrCreate(path, 2 << 20));
        Assert.Contains("refusing to resize", error.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void GetExtents_AfterWriteAndTrim_AlternateDataAndHoles()
    {
        using var image = BlockImage.OpenOrCreate(Path.Combine(_dir, "c.img"), 8 << 20);
        image.Write(1 << 20, new byte[1 << 20].Select(_ => (byte)1).ToArray());
        image.Trim((1 << 20) + (256 << 10), 256 << 10);
        var extents = new ImageExtent[8];
        var n = image.GetExtents(0, 8 << 20, extents);
        Assert.Equal(
            [
                new ImageExtent(0, 1 << 20, true),
                new ImageExtent(1 << 20, 256 << 10, false),
                new ImageExtent((1 << 20) + (256 << 10), 256 << 10, true),
                new ImageExtent((1 << 20) + (512 << 10), 512 << 10, false),
                new ImageExtent(2 << 20, 6 << 20, true),
            ],
            extents.AsSpan(0, n).ToArray());
    }

    [Fact]
    public void Zero_WithoutDeallocate_KeepsBlocksAllocatedAndReadsZero()
    {
        using var image = BlockImage.OpenOrCreate(Path.Combine(_dir, "d.img"), 4 << 20);
        image.Write(0, new byte[65536].Select(_ => (byte)7).ToArray());
        Assert.True(image.Zero(0, 65536, mayDeallocate: false, onlyIfFast: false));
        var back = new byte[65536];
        image.Read(0, back);
        Assert.All(back, b => Assert.Equal(0, b));
        var extents = new ImageExtent[4];
        image.GetExtents(0, 65536, extents);
        Assert.False(extents[0].IsHole);
    }

    [Fact]
    public void Read_OutsideTheImage_Throws()
    {
        using var image = BlockImage.OpenOrCreate(Path.Combine(_dir, "e.img"), 1 << 20);
        Assert.Throws<ArgumentOutOfRangeException>(() => image.Read((1 << 20) - 1, new byte[2]));
    }
}
