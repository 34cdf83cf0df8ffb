using System.Text.Json;
using System.Text.Json.Serialization;
using BlockRepl.Core;

namespace BlockRepl;

/// <summary>
/// The settings of <c>blockrepl serve</c>. Precedence: command-line flag, then the JSON config file, then
/// the default. Config keys are the flag names in camelCase (<c>dataDir</c>, <c>volume</c>, <c>image</c>,
/// <c>size</c>, <c>role</c>, <c>nbd</c>, <c>admin</c>).
/// </summary>
internal sealed record ServeOptions
{
    public string DataDir { get; init; } = "./data";

    public string Volume { get; init; } = "vol0";

    public string? Image { get; init; }

    public string? Size { get; init; }

    public string Role { get; init; } = "primary";

    public string Nbd { get; init; } = "127.0.0.1:10809";

    public string? Admin { get; init; }

    public static ServeOptions Load(string? configPath)
    {
        if (configPath is null)
        {
            return new ServeOptions();
        }

        try
        {
            var json = File.ReadAllBytes(configPath);
            return JsonSerializer.Deserialize(json, ServeOptionsJsonContext.Default.ServeOptions)
                ?? throw new UserError($"config {configPath} is empty");
        }
        catch (FileNotFoundException)
        {
            throw new UserError($"config {configPath} does not exist");
        }
        catch (JsonException ex)
        {
            throw new UserError($"config {configPath} is not valid: {ex.Message}");
        }
    }

    public string ImagePath => Path.GetFullPath(Image ?? Path.Combine(DataDir, Volume + ".img"));

    public string AdminAddress => Admin ?? DefaultAdmin(DataDir);

    public static string DefaultAdmin(string dataDir) => "unix:" + Path.GetFullPath(Path.Combine(dataDir, "admin.sock"));

    public VolumeOptions ToVolumeOptions()
    {
        long size = 0;
        if (Size is not null)
        {
            try
            {
                size = ByteSize.Parse(Size);
            }
            catch (FormatException ex)
            {
                throw new UserError($"--size: {ex.Message}");
            }
        }

        VolumeRole role;
        try
        {
            role = StateNames.ParseRole(Role);
        }
        catch (FormatException ex)
        {
            throw new UserError($"--role: {ex.Message}");
        }

        return new VolumeOptions { Name = Volume, ImagePath = ImagePath, SizeBytes = size, InitialRole = role };
    }
}

[JsonSourceGenerationOptions(PropertyNamingPolicy = JsonKnownNamingPolicy.CamelCase, ReadCommentHandling = JsonCommentHandling.Skip,
    AllowTrailingCommas = true, UnmappedMemberHandling = JsonUnmappedMemberHandling.Disallow)]
[JsonSerializable(typeof(ServeOptions))]
internal sealed partial class ServeOptionsJsonContext : JsonSerializerContext;
