namespace BlockRepl.Tests.Unit;

public sealed class ByteSizeTests
{
    [Theory]
    [InlineData("512", 512L)]
    [InlineData("64K", 65536L)]
    [InlineData("1M", 1L << 20)]
    [InlineData("10G", 10L << 30)]
    [InlineData("1GiB", 1L << 30)]
    [InlineData("2t", 2L << 40)]
    public void Parse_ValidSizes_AreBinaryUnits(string text, long expected) => Assert.Equal(expected, ByteSize.Parse(text));

    [Theory]
    [InlineData("")]
    [InlineData("0")]
    [InlineData("-1G")]
    [InlineData("1.5G")]
    [InlineData("10X")]
    [InlineData("99999999999T")]
    public void Parse_InvalidSizes_Throw(string text) => Assert.Throws<FormatException>(() => ByteSize.Parse(text));
}
